"""Asynchronous inference in policy_node: backbone rate vs expert rate, and sensor -> action latency.

    .venv/bin/python bench/async_node.py [--seconds 10] [--configs diffusion:async] [--json runs/bench/async_node.json]

The node runs as its own process (as deployed) with `tiny` checkpoints; this process plays the robot:
two cameras at 10 Hz, a 6-channel sensor at 650 Hz (SensorPacket batches of 13 at 50 Hz) and joint
states at --state-hz (default 100 Hz, the seed robot's rate), all stamped with the wall clock. It
subscribes to the chunks and the node's status. The node makes a chunk only from inputs newer than its
last chunk's, so the input rates bound the expert's: 50 packets + 100 states a second here.

- backbone_hz, chunk_hz: from the node's status (runs per second over its last 50 events);
- sensor_to_chunk_ms: chunk receipt time minus the stamp of the newest sensor sample it used (the
  chunk's stamp in async mode, the freshest input), i.e. sensor sample -> action available here.
Configurations: synchronous (the expert waits for each frame) vs async, for both experts.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import rclpy
import torch
from diagnostic_msgs.msg import DiagnosticArray
from rclpy.executors import SingleThreadedExecutor
from rclpy.node import Node
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState

from vla_models import build_policy, preset
from vla_models.testing import fit_fake_statistics
from vla_policy_ros.image_conversion import rgb_to_image_msg
from vla_policy_ros.msg import ActionChunk, SensorPacket

ROOT = Path(__file__).resolve().parents[1]
SENSOR_HZ, PACKET = 650, 13


def checkpoints(root: Path) -> dict[str, str]:
    out = {}
    for kind in ("regression", "diffusion"):
        torch.manual_seed(0)
        policy = build_policy(preset("tiny", **{"expert.type": kind}))
        fit_fake_statistics(policy)
        out[kind] = str(policy.save(root / kind))
    return out


def stamp_msg(t: float):
    return Time(nanoseconds=int(t * 1e9)).to_msg()


def run_config(ckpts: dict, policy_type: str, async_mode: bool, seconds: float, domain: int,
               state_hz: float = 100.0) -> dict:
    env = dict(os.environ, ROS_DOMAIN_ID=str(domain))
    exe = Path(sys.executable).parent / "policy_node"
    params = {"regression_checkpoint": ckpts["regression"], "diffusion_checkpoint": ckpts["diffusion"],
              "policy_type": policy_type, "async_inference": async_mode, "rate_hz": 100.0 if async_mode else 0.0,
              "min_interval_s": 0.0, "sensor_type": "packet", "sensor_topic": "sensor", "slop_s": 0.02,
              "instruction": "insert the needle", "input_timeout_s": 1.0}
    args = [str(exe), "--ros-args"] + [a for k, v in params.items() for a in ("-p", f"{k}:={json.dumps(v) if isinstance(v, bool) else v}")]
    proc = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    context = rclpy.Context()
    rclpy.init(context=context, domain_id=domain)
    node = Node("bench_robot", context=context)
    pubs = {v: node.create_publisher(Image, f"camera/{v}/image_raw", 10) for v in ("front", "wrist")}
    sensor = node.create_publisher(SensorPacket, "sensor", 50)
    state = node.create_publisher(JointState, "joint_states", 50)
    received: list[tuple[float, float]] = []  # (receipt wall time, chunk stamp)
    status: dict = {}
    node.create_subscription(ActionChunk, "/vla_policy/action_chunk",
                             lambda m: received.append((time.time(), m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)),
                             100)
    node.create_subscription(DiagnosticArray, "/diagnostics",
                             lambda m: status.update({kv.key: kv.value for s in m.status if s.name == "/vla_policy"
                                                      for kv in s.values}), 10)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (240, 320, 3), dtype=np.uint8) for _ in range(4)]

    def camera():
        t = time.time()
        for v in pubs:
            pubs[v].publish(rgb_to_image_msg(frames[rng.integers(4)], stamp_msg(t)))

    def fast():
        t = time.time()
        packet = SensorPacket(channels=6, num_samples=PACKET, sample_rate=float(SENSOR_HZ),
                              data=rng.normal(size=PACKET * 6).astype(np.float32).tolist())
        packet.header.stamp = stamp_msg(t - (PACKET - 1) / SENSOR_HZ)  # first sample's time: the last is now
        sensor.publish(packet)

    def robot_state():
        js = JointState(name=[f"j{i}" for i in range(8)], position=rng.normal(size=8).tolist())
        js.header.stamp = stamp_msg(time.time())
        state.publish(js)

    node.create_timer(0.1, camera)
    node.create_timer(PACKET / SENSOR_HZ, fast)
    node.create_timer(1.0 / state_hz, robot_state)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    try:
        deadline = time.time() + 60
        while not received and time.time() < deadline:  # model loading and warm-up
            executor.spin_once(timeout_sec=0.05)
        received.clear()
        start = time.time()
        while time.time() - start < seconds:
            executor.spin_once(timeout_sec=0.01)
        last_status = dict(status)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        node.destroy_node()
        rclpy.try_shutdown(context=context)
    latencies = [1e3 * (r - s) for r, s in received]
    backbone_hz = float(last_status.get("backbone_hz") or 0.0)
    chunk_hz = len(received) / seconds
    return {"policy_type": policy_type, "async": async_mode, "chunks": len(received), "chunk_hz": chunk_hz,
            "backbone_hz_status": backbone_hz, "chunk_hz_status": float(last_status.get("chunk_hz") or 0.0),
            "expert_to_backbone_rate": chunk_hz / backbone_hz if backbone_hz else None,
            "sensor_to_chunk_ms": {"median": statistics.median(latencies), "p95": float(np.percentile(latencies, 95))}
            if latencies else None,
            "node_sensor_to_action_ms": last_status.get("sensor_to_action_ms"),
            "stale_features": last_status.get("stale_features"), "last_error": last_status.get("last_error")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--state-hz", type=float, default=100.0, help="joint state rate (default 100 Hz)")
    parser.add_argument("--configs", default="regression:sync,regression:async,diffusion:sync,diffusion:async",
                        help="POLICY:sync|async, comma-separated (default: all four)")
    parser.add_argument("--json")
    args = parser.parse_args()
    configs = []
    for item in args.configs.split(","):
        policy_type, _, mode = item.partition(":")
        if policy_type not in ("regression", "diffusion") or mode not in ("sync", "async"):
            parser.error(f"--configs: expected POLICY:MODE with POLICY regression|diffusion and MODE sync|async, "
                         f"got {item!r}")
        configs.append((policy_type, mode == "async"))
    with tempfile.TemporaryDirectory() as tmp:
        ckpts = checkpoints(Path(tmp))
        results = []
        domain = int(os.environ.get("ROS_DOMAIN_ID", str(120 + os.getpid() % 50)))
        for policy_type, async_mode in configs:
            r = run_config(ckpts, policy_type, async_mode, args.seconds, domain, args.state_hz)
            results.append(r)
            print(json.dumps(r))
    out = {"machine": {"cpu_count": os.cpu_count(), "torch": torch.__version__}, "cameras_hz": 10,
           "sensor_hz": SENSOR_HZ, "sensor_packet_hz": SENSOR_HZ / PACKET,
           "state_hz": args.state_hz, "results": results}
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(out, indent=2))
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
