"""MoveIt Servo's own switches and status, for the servo interfaces: Servo starts paused (Iron+) or stopped
(Humble) and takes one command type at a time, so twists sent without this go nowhere.

- activate: select the command type (`<servo>/switch_command_type`, moveit_msgs/srv/ServoCommandType,
  Iron+/Jazzy) and unpause (`<servo>/pause_servo`, std_srvs/SetBool false), or on Humble start it
  (`<servo>/start_servo`, std_srvs/Trigger); deactivate: pause (or `stop_servo`). Only the services that
  exist are called; with none, the node says so in /diagnostics and leaves Servo as it is.
- status: `<servo>/status` (moveit_msgs/msg/ServoStatus on Jazzy, std_msgs/msg/Int8 on Humble; the type
  the graph announces) goes into /diagnostics; a halting code (singularity, collision, joint bound) is a
  fault: the node holds until Servo reports a non-halting status.
Servo itself must take twists in `command_in_type: speed_units` (m/s, rad/s): what the node sends.
"""

from __future__ import annotations

import threading
import time

from rclpy.callback_groups import ReentrantCallbackGroup
from std_msgs.msg import Int8
from std_srvs.srv import SetBool, Trigger

# moveit_servo StatusCode (Humble and Jazzy agree on these values)
STATUS_NAMES = {-1: "invalid", 0: "no warning", 1: "decelerate for singularity", 2: "halt for singularity",
                3: "decelerate for collision", 4: "halt for collision", 5: "joint bound",
                6: "decelerate for leaving singularity"}
HALTING = (2, 4, 5)
COMMAND_TYPES = {"joint_jog": 0, "twist": 1, "pose": 2}  # moveit_msgs/srv/ServoCommandType


def _servo_status_type():
    try:
        from moveit_msgs.msg import ServoStatus
    except ImportError:
        return None
    return ServoStatus


class ServoSetup:
    """Servo's switches and status for one node; `state` says what the last start/stop did."""

    def __init__(self, node, servo: str, command_type: str, on_halt, wait_s: float = 2.0) -> None:
        self.node, self.servo, self.command_type, self.on_halt = node, servo.rstrip("/"), command_type, on_halt
        self.wait_s = wait_s
        group = ReentrantCallbackGroup()  # answers arrive while a transition callback waits for them
        self.pause = node.create_client(SetBool, f"{self.servo}/pause_servo", callback_group=group)
        self.start_client = node.create_client(Trigger, f"{self.servo}/start_servo", callback_group=group)
        self.stop_client = node.create_client(Trigger, f"{self.servo}/stop_servo", callback_group=group)
        try:
            from moveit_msgs.srv import ServoCommandType
            self.switch_type = ServoCommandType
            self.switch = node.create_client(ServoCommandType, f"{self.servo}/switch_command_type", callback_group=group)
        except ImportError:
            self.switch_type = self.switch = None
        self.status_sub = None
        self.status: tuple[int, str] | None = None
        self.state = "not started"
        self.started = False
        self._lock = threading.Lock()  # one start/stop at a time (activation's thread, ~/enable)

    # -- status ------------------------------------------------------------------------------------------
    def subscribe_status(self) -> None:
        """The status with the type the graph announces (ServoStatus or Int8); importability decides before
        Servo is seen."""
        if self.status_sub is not None:
            return
        topic = f"{self.servo}/status"
        announced = dict(self.node.get_topic_names_and_types()).get(topic, [])
        servo_status = _servo_status_type()
        kind = Int8 if "std_msgs/msg/Int8" in announced or servo_status is None else servo_status
        self.status_sub = self.node.create_subscription(kind, topic, self._on_status, 10)

    def _on_status(self, msg) -> None:
        code = int(msg.data if isinstance(msg, Int8) else msg.code)
        message = getattr(msg, "message", "")
        self.status = (code, message)
        if code in HALTING:
            self.on_halt(self.halted())

    def halted(self) -> str:
        """Why Servo is halted now ('' = it is not)."""
        if self.status is None or self.status[0] not in HALTING:
            return ""
        code, message = self.status
        return f"MoveIt Servo halted: {STATUS_NAMES[code]} (status {code}{': ' + message if message else ''})"

    def describe(self) -> str:
        if self.status is None:
            return "no status yet"
        return f"{self.status[0]} ({STATUS_NAMES.get(self.status[0], 'unknown')}) {self.status[1]}".strip()

    # -- switches ------------------------------------------------------------------------------------------
    def _call(self, client, request, timeout: float = 1.0):
        done = threading.Event()
        future = client.call_async(request)
        future.add_done_callback(lambda f: done.set())
        if not done.wait(timeout):
            client.remove_pending_request(future)
            return None
        return future.result()

    def _ready(self, *clients) -> list:
        deadline = time.monotonic() + self.wait_s
        while True:
            ready = [c for c in clients if c is not None and c.service_is_ready()]
            if ready or time.monotonic() > deadline:
                return ready
            time.sleep(0.02)

    def available(self) -> bool:
        """Whether Servo's pause_servo or start_servo service is there now."""
        return self.pause.service_is_ready() or self.start_client.service_is_ready()

    def start(self) -> bool:
        """Select the command type and unpause (Iron+), or start Servo (Humble); True when Servo was set up.
        Waits up to wait_s for Servo's services to be discovered."""
        with self._lock:
            return self.started or self._start()

    def _start(self) -> bool:
        ready = self._ready(self.pause, self.start_client)
        self.subscribe_status()
        steps = []
        if self.switch is not None and self.switch.service_is_ready():
            answer = self._call(self.switch, self.switch_type.Request(command_type=COMMAND_TYPES[self.command_type]))
            if answer is None or not answer.success:
                self.state = f"{self.servo}/switch_command_type to {self.command_type} failed"
                return False
            steps.append(f"command type {self.command_type}")
        elif self.switch is None and self.pause in ready:
            steps.append("moveit_msgs not importable: command type not selected (set it in Servo's YAML)")
        if self.pause in ready:
            answer = self._call(self.pause, SetBool.Request(data=False))
            ok, steps = answer is not None and answer.success, steps + ["unpaused"]
        elif self.start_client in ready:
            answer = self._call(self.start_client, Trigger.Request())
            ok, steps = answer is not None and answer.success, steps + ["started (start_servo)"]
        else:
            self.state = f"no Servo services at {self.servo} (pause_servo / start_servo): Servo left as it is"
            return False
        self.started = ok
        self.state = ", ".join(steps) if ok else f"{self.servo}: {steps[-1]} failed"
        return ok

    def stop(self) -> None:
        """Pause (Iron+) or stop (Humble) Servo; nothing when neither service is there."""
        with self._lock:
            self._stop()

    def _stop(self) -> None:
        if self.pause.service_is_ready():
            answer, what = self._call(self.pause, SetBool.Request(data=True)), "paused"
        elif self.stop_client.service_is_ready():
            answer, what = self._call(self.stop_client, Trigger.Request()), "stopped (stop_servo)"
        else:
            return
        self.started = False
        self.state = what if answer is not None and answer.success else f"{what}: no success answer"

    def destroy(self) -> None:
        for client in (self.pause, self.start_client, self.stop_client, self.switch):
            if client is not None:
                self.node.destroy_client(client)
        if self.status_sub is not None:
            self.node.destroy_subscription(self.status_sub)
