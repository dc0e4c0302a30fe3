"""Helpers for ROS tests: an isolated rclpy context per test, spinning, waiting without fixed sleeps."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
from rclpy.executors import MultiThreadedExecutor
from rclpy.time import Time

from vla_policy_ros.spinning import spin

_domains = itertools.count()
# ids a test reserved for a child process it starts (a bench script, a stand-in interop run): the child takes
# these rather than counting from its worker's first id again, where the parent's earlier children (their
# processes still shutting down) or its own harnesses may be
CHILD_DOMAINS = "VLA_TEST_DOMAIN_IDS"


def next_domain_id() -> int:
    """A ROS domain id no other test of this run uses at the same time: each pytest-xdist worker draws from a
    range of its own (gw0: 20-59, gw1: 60-99, ...; one process without xdist: 20-59), so parallel tests never
    discover each other's nodes; a child process draws from the ids its parent reserved (reserve_domain_ids)."""
    reserved = os.environ.get(CHILD_DOMAINS)
    if reserved:
        ids = [int(v) for v in reserved.split(",")]
        return ids[next(_domains) % len(ids)]
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw") or 0)
    return 20 + 40 * (worker % 5) + next(_domains) % 40


def reserve_domain_ids(count: int = 4) -> dict[str, str]:
    """Environment for a child process: `count` fresh domain ids of this process's range (ROS_DOMAIN_ID the first)."""
    ids = [next_domain_id() for _ in range(count)]
    return {CHILD_DOMAINS: ",".join(map(str, ids)), "ROS_DOMAIN_ID": str(ids[0])}


class RosHarness:
    """A private context (own domain id) with a background executor; add nodes, wait for conditions."""

    def __init__(self) -> None:
        self.domain_id = next_domain_id()
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=self.domain_id)
        self.executor = MultiThreadedExecutor(context=self.context)
        self.nodes = []
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        while self.context.ok():
            try:  # as the node's main() spins: a node's cleanup destroying its entities does not end the spinning
                spin(self.executor, self.context)
            except Exception:  # noqa: BLE001 - shutting down
                if not self.context.ok():
                    return
                raise

    def add(self, node):
        self.nodes.append(node)
        self.executor.add_node(node)
        return node

    @staticmethod
    def wait_for(predicate, timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return
            time.sleep(0.01)
        raise AssertionError(f"timed out after {timeout}s waiting for {what}")

    def close(self) -> None:
        for node in self.nodes:
            if hasattr(node, "shutdown"):
                node.shutdown()
        self.executor.shutdown(timeout_sec=2.0)
        for node in self.nodes:
            node.destroy_node()
        rclpy.try_shutdown(context=self.context)
        self._thread.join(timeout=5.0)


def stamp(seconds: float):
    return Time(nanoseconds=int(seconds * 1e9)).to_msg()


def publish_inputs(pubs: dict, t: float, views: list[str], state_dim: int, rng: np.random.Generator,
                   image_size=(48, 64)) -> None:
    """One synchronised set of synthetic inputs stamped t: an image per view, a wrench, a joint state."""
    from geometry_msgs.msg import WrenchStamped
    from sensor_msgs.msg import JointState

    from vla_policy_ros.image_conversion import rgb_to_image_msg

    for view in views:
        rgb = rng.integers(0, 256, (*image_size, 3), dtype=np.uint8)
        pubs[view].publish(rgb_to_image_msg(rgb, stamp(t)))
    wrench = WrenchStamped()
    wrench.header.stamp = stamp(t)
    wrench.wrench.force.x, wrench.wrench.force.z = float(rng.normal()), float(rng.normal())
    pubs["sensor"].publish(wrench)
    js = JointState(name=[f"j{i}" for i in range(state_dim)], position=rng.normal(size=state_dim).tolist())
    js.header.stamp = stamp(t)
    pubs["state"].publish(js)


def start_policy_node(ros, params: dict):
    """A PolicyNode in the harness, waited on until autostart has activated it (or failed, raised)."""
    from rclpy.parameter import Parameter

    from vla_policy_ros.policy_node import PolicyNode

    node = ros.add(PolicyNode(context=ros.context, parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))
    ros.wait_for(lambda: node.active or node.failed, timeout=60, what="the policy node to activate")
    assert not node.failed, node.failed
    return node


ROOT = Path(__file__).resolve().parents[1]


STANDINS = ("control_msgs", "moveit_msgs")  # built in this order (moveit's JointJog is control_msgs')


def standins_prefix() -> Path:
    """The stand-in interface packages test/standin/* built with rosidl into one install prefix (~25 s, the
    first test to ask builds it, under a lock that the other pytest-xdist workers wait on; kept under build/
    keyed by the stand-ins' sources): the real control_msgs / moveit_msgs are not installable here; the
    stand-ins have the same names and fields."""
    import fcntl
    import hashlib

    sources = sorted(p for name in STANDINS for p in (ROOT / "test" / "standin" / name).rglob("*") if p.is_file())
    digest = hashlib.sha256(sys.executable.encode())
    for path in sources:
        digest.update(str(path.relative_to(ROOT)).encode() + path.read_bytes())
    root = ROOT / "build" / "standins"
    root.mkdir(parents=True, exist_ok=True)
    work = root / digest.hexdigest()[:16]
    prefix, done = work / "install", work / "built"
    with open(root / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done.exists():
            env = dict(os.environ, AMENT_PREFIX_PATH=sys.prefix)
            for package in STANDINS:
                build = work / f"build_{package}"
                configure = ["cmake", "-S", str(ROOT / "test" / "standin" / package), "-B", str(build),
                             f"-DCMAKE_INSTALL_PREFIX={prefix}", f"-DCMAKE_PREFIX_PATH={prefix};{sys.prefix}",
                             f"-DPython3_EXECUTABLE={sys.executable}", "-DBUILD_TESTING=OFF"]
                for cmd in (configure, ["cmake", "--build", str(build), "-j2"], ["cmake", "--install", str(build)]):
                    result = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
                    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
            done.touch()
    return prefix


def run_with_standins(prefix: Path, test_file: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """pytest on test/<test_file> in a process that imports the stand-ins installed under `prefix`."""
    site = prefix / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    env = dict(os.environ, **reserve_domain_ids(8),
               PYTHONPATH=os.pathsep.join([str(site), str(ROOT / "test"), os.environ.get("PYTHONPATH", "")]),
               LD_LIBRARY_PATH=os.pathsep.join([str(prefix / "lib"), os.environ.get("LD_LIBRARY_PATH", "")]),
               AMENT_PREFIX_PATH=os.pathsep.join([str(prefix), os.environ.get("AMENT_PREFIX_PATH", sys.prefix)]))
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-rA", "-p", "no:cacheprovider",
                           str(ROOT / "test" / test_file)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=timeout)
