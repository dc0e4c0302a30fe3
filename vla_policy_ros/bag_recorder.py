"""`bag_recorder`: record topics to a rosbag2 (mcap or sqlite3) through rosbags, as on a robot.

    bag_recorder --ros-args -p output:=bags/session1 -p topics:="['/joint_states', '/sensor']"

Subscriptions are raw (the wire bytes are written as they arrive, no re-serialisation); each
message is written with its receive time. Topic types are discovered from the graph (waits up to
`discovery_timeout_s` for every topic). The bag is written under `<output>.partial` and renamed
to `<output>` on a clean stop (SIGINT, or `max_duration_s`/`max_messages` reached), so a bag at
`output` is always complete. `vla data import-bag` converts it into an episode.
"""

from __future__ import annotations

import importlib
import os
import shutil
import threading
import time
from pathlib import Path

import rclpy
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import QoSProfile, ReliabilityPolicy

from vla_training.data.import_bag import typestore


def message_class(msgtype: str):
    """'pkg/msg/Name' -> the rclpy message class (as rosidl_runtime_py.get_message, not installable here)."""
    package, kind, name = msgtype.split("/")
    return getattr(importlib.import_module(f"{package}.{kind}"), name)


class BagRecorder(Node):
    def __init__(self, **kwargs) -> None:
        super().__init__("bag_recorder", **kwargs)
        self.output = Path(self.declare_parameter("output", "bags/recording").value)
        self.topics = [t for t in self.declare_parameter("topics", [""]).value if t]
        self.storage = self.declare_parameter("storage", "mcap").value
        self.discovery_timeout_s = self.declare_parameter("discovery_timeout_s", 30.0).value
        self.max_duration_s = self.declare_parameter("max_duration_s", 0.0).value
        self.max_messages = self.declare_parameter("max_messages", 0).value
        if not self.topics:
            raise ValueError("parameter topics: expected a list of topic names to record, got []")
        if self.storage not in ("mcap", "sqlite3"):
            raise ValueError(f"parameter storage: expected mcap or sqlite3, got {self.storage!r}")
        self.counts = {t: 0 for t in self.topics}
        self.done = threading.Event()
        self._lock = threading.Lock()
        self._writer = None
        self._connections = {}
        self._started = None

    def start(self) -> None:
        """Discover the topic types, open the bag, subscribe (raw)."""
        from rosbags.rosbag2 import StoragePlugin, Writer

        types = self._discover()
        self.partial = self.output.with_name(self.output.name + ".partial")
        if self.output.exists():
            raise ValueError(f"parameter output: {self.output} exists already; expected a new bag path")
        shutil.rmtree(self.partial, ignore_errors=True)
        self.partial.parent.mkdir(parents=True, exist_ok=True)
        plugin = StoragePlugin.MCAP if self.storage == "mcap" else StoragePlugin.SQLITE3
        self._writer = Writer(self.partial, version=9, storage_plugin=plugin)
        self._writer.open()
        store = typestore()
        for topic, msgtype in types.items():
            self._connections[topic] = self._writer.add_connection(topic, msgtype, typestore=store)
            self.create_subscription(message_class(msgtype), topic, lambda raw, t=topic: self._on_message(t, raw),
                                     self.qos_for(topic), raw=True)
        self._started = time.monotonic()
        self.get_logger().info(f"recording {sorted(types)} to {self.output}")

    def qos_for(self, topic: str) -> QoSProfile:
        """Reliable when every publisher of the topic is; best effort as soon as one is (cameras with
        sensor-data QoS): a reliable subscription would receive nothing from a best-effort publisher."""
        publishers = self.get_publishers_info_by_topic(topic)
        best_effort = any(info.qos_profile.reliability == ReliabilityPolicy.BEST_EFFORT for info in publishers)
        return QoSProfile(depth=1000, reliability=ReliabilityPolicy.BEST_EFFORT if best_effort
                          else ReliabilityPolicy.RELIABLE)

    def _discover(self) -> dict[str, str]:
        deadline = time.monotonic() + self.discovery_timeout_s
        while True:
            known = dict((name, kinds[0]) for name, kinds in self.get_topic_names_and_types())
            if all(t in known for t in self.topics):
                return {t: known[t] for t in self.topics}
            if time.monotonic() > deadline:
                missing = [t for t in self.topics if t not in known]
                raise ValueError(f"parameter topics: {missing} not published within {self.discovery_timeout_s} s; "
                                 f"the graph has {sorted(known)}")
            time.sleep(0.1)

    def _on_message(self, topic: str, raw: bytes) -> None:
        with self._lock:
            if self._writer is None:
                return
            self._writer.write(self._connections[topic], self.get_clock().now().nanoseconds, raw)
            self.counts[topic] += 1
            total = sum(self.counts.values())
        if (self.max_messages and total >= self.max_messages) or \
                (self.max_duration_s and time.monotonic() - self._started >= self.max_duration_s):
            self.done.set()

    def finish(self) -> Path | None:
        """Close the bag and move it into place (only a complete bag ends up at `output`)."""
        with self._lock:
            if self._writer is None:
                return None
            self._writer.close()
            self._writer = None
        os.replace(self.partial, self.output)
        self.get_logger().info(f"wrote {self.output}: {self.counts}")
        return self.output


def main(args=None) -> int:
    rclpy.init(args=args)
    node = None
    code = 0
    try:
        node = BagRecorder()
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        node.start()
        while rclpy.ok() and not node.done.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    except ValueError as exc:
        print(f"bag_recorder: error: {exc}", flush=True)
        code = 1
    finally:
        if node is not None:
            node.finish()
            node.destroy_node()
        rclpy.try_shutdown()
    return code


if __name__ == "__main__":
    raise SystemExit(main())
