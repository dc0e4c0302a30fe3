"""`bag_replay`: publish a rosbag2's messages with their original timing, and record what comes back.

    bag_replay --ros-args -p bag:=bags/session1 -p rate:=1.0 \\
        -p record_topics:="['/vla_policy/action_chunk']" -p record_output:=bags/session1_outputs

Messages are read with rosbags and published as their raw CDR bytes (no re-serialisation), spaced
as they were recorded (receive times) divided by `rate`; `loop` repeats the bag; `publish_clock`
publishes /clock from the recorded times (for nodes with use_sim_time). Publishing starts once
every replayed topic has a subscriber (or after `wait_for_subscribers_s`). With `record_topics`,
a BagRecorder in the same process writes those topics (e.g. the policy's chunks) and the replayed
ones to `record_output`, so `vla bag-eval OUTPUT --chunks-topic ...` can compare the live run with
the offline evaluation of the same bag.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, MultiThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy
from rclpy.time import Time
from rosgraph_msgs.msg import Clock

from vla_training.data.import_bag import typestore

from .bag_recorder import BagRecorder, message_class


class BagReplay(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("bag_replay", **kwargs)
        self.bag = Path(self.declare_parameter("bag", "").value)
        self.rate = float(self.declare_parameter("rate", 1.0).value)
        self.loop = bool(self.declare_parameter("loop", False).value)
        self.publish_clock = bool(self.declare_parameter("publish_clock", False).value)
        self.topics = [t for t in self.declare_parameter("topics", [""]).value if t]  # [] = every topic
        self.wait_s = float(self.declare_parameter("wait_for_subscribers_s", 10.0).value)
        self.settle_s = float(self.declare_parameter("settle_s", 1.0).value)
        if not (self.bag / "metadata.yaml").exists():
            raise ValueError(f"parameter bag: expected a rosbag2 directory with metadata.yaml, got {str(self.bag)!r}")
        if self.rate <= 0:
            raise ValueError(f"parameter rate: expected > 0, got {self.rate}")
        self.records = self._read()
        if not self.records:
            raise ValueError(f"parameter bag: {self.bag} has no messages on {sorted(self.types) or 'any topic'}; "
                             "expected a bag with messages to replay")
        qos = QoSProfile(depth=100, reliability=ReliabilityPolicy.RELIABLE)
        self.pubs = {topic: self.create_publisher(message_class(msgtype), topic, qos)
                     for topic, msgtype in self.types.items()}
        self.clock_pub = self.create_publisher(Clock, "/clock", 10) if self.publish_clock else None
        self.published = 0
        self.finished = threading.Event()
        self._stop = threading.Event()

    def _read(self) -> list[tuple[int, str, bytes]]:
        from rosbags.highlevel import AnyReader

        with AnyReader([self.bag], default_typestore=typestore()) as reader:
            conns = [c for c in reader.connections if not self.topics or c.topic in self.topics]
            missing = sorted(set(self.topics) - {c.topic for c in conns})
            if missing:
                raise ValueError(f"parameter topics: {missing} not in {self.bag}; it has "
                                 f"{sorted(c.topic for c in reader.connections)}")
            self.types = {c.topic: c.msgtype for c in conns}
            return [(t, c.topic, bytes(raw)) for c, t, raw in reader.messages(connections=conns)]

    def run(self) -> None:
        deadline = time.monotonic() + self.wait_s
        while time.monotonic() < deadline and not all(p.get_subscription_count() for p in self.pubs.values()):
            time.sleep(0.05)
        time.sleep(self.settle_s)  # let late subscriptions (e.g. a recorder's) match too
        try:
            while not self._stop.is_set():
                start_wall, start_bag = time.monotonic(), self.records[0][0]
                for stamp_ns, topic, raw in self.records:
                    due = start_wall + (stamp_ns - start_bag) * 1e-9 / self.rate
                    if self._stop.wait(max(0.0, due - time.monotonic())):
                        return
                    if self.clock_pub is not None:
                        self.clock_pub.publish(Clock(clock=Time(nanoseconds=stamp_ns).to_msg()))
                    self.pubs[topic].publish(raw)
                    self.published += 1
                if not self.loop:
                    return
        finally:
            self.finished.set()


def main(args=None) -> int:
    rclpy.init(args=args)
    replay = recorder = None
    code = 0
    try:
        replay = BagReplay()
        executor = MultiThreadedExecutor()
        executor.add_node(replay)
        record_topics = [t for t in replay.declare_parameter("record_topics", [""]).value if t]
        if record_topics:
            output = replay.declare_parameter("record_output", str(replay.bag) + "_outputs").value
            recorder = BagRecorder(parameter_overrides=[rclpy.parameter.Parameter("output", value=output),
                                                        rclpy.parameter.Parameter(
                                                            "topics", value=record_topics + list(replay.types))])
            executor.add_node(recorder)
            recorder.start()
        thread = threading.Thread(target=replay.run, daemon=True)
        thread.start()
        while rclpy.ok() and not replay.finished.is_set():
            executor.spin_once(timeout_sec=0.05)
        end = time.monotonic() + replay.settle_s  # outputs of the last messages
        while rclpy.ok() and time.monotonic() < end:
            executor.spin_once(timeout_sec=0.05)
        print(f"bag_replay: published {replay.published} messages from {replay.bag}", flush=True)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        print(f"bag_replay: error: {exc}", flush=True)
        code = 1
    finally:
        if replay is not None:
            replay._stop.set()
        if recorder is not None:
            recorder.finish()
            recorder.destroy_node()
        if replay is not None:
            replay.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
