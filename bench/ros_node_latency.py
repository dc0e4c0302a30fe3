"""Benchmark of policy_node: its own overhead beyond model compute, and camera-stamp -> chunk latency.

    .venv/bin/python bench/ros_node_latency.py [--iters 200] [--json out.json]

1. Overhead (in-process, the node's real callbacks and methods, no transport): two 640x480 rgb8
   Image messages -> numpy (the subscription callbacks), a 64-sample wrench window and a joint
   state, observation assembly (synchronisation + sensor window), and the ActionChunk message built
   and published. Model compute (the policy's preprocessing, backbone, encoders, expert) is timed
   separately and excluded.
2. End to end through DDS on loopback: a publisher stamps images/state with the wall clock; the
   latency is the receipt time of the chunk minus its (observation) stamp, with the `tiny` backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import rclpy
import torch
from geometry_msgs.msg import WrenchStamped
from rclpy.executors import MultiThreadedExecutor
from rclpy.parameter import Parameter
from rclpy.time import Time
from sensor_msgs.msg import Image, JointState

from vla_models import build_policy, preset
from vla_models.testing import fit_fake_statistics
from vla_policy_ros.image_conversion import rgb_to_image_msg
from vla_policy_ros.inference import ChunkResult
from vla_policy_ros.msg import ActionChunk
from vla_policy_ros.policy_node import PolicyNode


IMAGE_HW = (480, 640)


def percentiles(values: list[float]) -> dict[str, float]:
    return {"median_ms": statistics.median(values), "p95_ms": float(np.percentile(values, 95)), "n": len(values)}


def make_checkpoint(root: Path) -> str:
    torch.manual_seed(0)
    policy = build_policy(preset("tiny"))
    fit_fake_statistics(policy)
    return str(policy.save(root / "regression"))


def messages(t: float, rng) -> tuple[list[Image], list[WrenchStamped], JointState]:
    stamp = Time(nanoseconds=int(t * 1e9)).to_msg()
    images = [rgb_to_image_msg(rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8), stamp) for _ in range(2)]
    wrenches = []
    for i in range(64):
        w = WrenchStamped()
        w.header.stamp = Time(nanoseconds=int((t - (63 - i) / 650) * 1e9)).to_msg()
        w.wrench.force.z = float(rng.normal())
        wrenches.append(w)
    js = JointState(name=[f"j{i}" for i in range(8)], position=rng.normal(size=8).tolist())
    js.header.stamp = stamp
    return images, wrenches, js


def overhead(node: PolicyNode, iters: int) -> dict:
    """The node's public pieces driven directly: `node.inputs` (the subscription callbacks' conversion and
    buffering), `node.worker.assemble_observation()`, `node.chunk_message()` and its chunk publisher."""
    rng = np.random.default_rng(0)
    policy = node.policies["regression"]
    params = node.snapshot()[0]
    parts = {"convert_and_buffer": [], "assemble": [], "chunk_message": [], "node_overhead": [],
             "model_preprocess": [], "model_compute": []}
    for i in range(iters + 10):
        images, wrenches, js = messages(100.0 + i * 0.1, rng)
        t0 = time.perf_counter()
        node.inputs.on_image("front", images[0])
        node.inputs.on_image("wrist", images[1])
        for w in wrenches:
            node.inputs.on_sensor(w)
        node.inputs.on_joint_state(js, is_policy_state=True)
        t1 = time.perf_counter()
        stamp, obs = node.worker.assemble_observation()
        t2 = time.perf_counter()
        chunk = policy.predict_action_chunk(obs)[0].numpy()
        t3 = time.perf_counter()
        msg = node.chunk_message(ChunkResult(stamp, chunk, "regression", params, (t3 - t2) * 1e3, None,
                                             policy.expert.sampling()))
        node.chunk_pub.publish(msg)
        t4 = time.perf_counter()
        if i < 10:
            continue  # warm-up
        parts["convert_and_buffer"].append((t1 - t0) * 1e3)
        parts["assemble"].append((t2 - t1) * 1e3)
        parts["chunk_message"].append((t4 - t3) * 1e3)
        parts["node_overhead"].append((t1 - t0 + t2 - t1 + t4 - t3) * 1e3)
        parts["model_preprocess"].append(policy.last_timings["preprocess_ms"])
        parts["model_compute"].append((t3 - t2) * 1e3 - policy.last_timings["preprocess_ms"])
    return {k: percentiles(v) for k, v in parts.items()}


def end_to_end(ctx, node: PolicyNode, seconds: float, rate_hz: float) -> dict:
    probe = rclpy.create_node("latency_probe", context=ctx)
    latencies: list[float] = []

    def on_chunk(msg: ActionChunk) -> None:
        now = time.time()
        latencies.append((now - (msg.header.stamp.sec + msg.header.stamp.nanosec * 1e-9)) * 1e3)

    probe.create_subscription(ActionChunk, "/vla_policy/action_chunk", on_chunk, 10)
    pubs = [probe.create_publisher(Image, f"camera/{v}/image_raw", 10) for v in ("front", "wrist")]
    sensor_pub = probe.create_publisher(WrenchStamped, "sensor/wrench", 100)
    state_pub = probe.create_publisher(JointState, "joint_states", 10)
    executor = MultiThreadedExecutor(context=ctx)
    executor.add_node(node)
    executor.add_node(probe)
    spinner = threading.Thread(target=executor.spin, daemon=True)
    spinner.start()
    deadline = time.monotonic() + 10
    while not all(p.get_subscription_count() for p in pubs) and time.monotonic() < deadline:
        time.sleep(0.01)
    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, (*IMAGE_HW, 3), dtype=np.uint8)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        stamp = Time(nanoseconds=time.time_ns()).to_msg()
        for pub in pubs:
            pub.publish(rgb_to_image_msg(frame, stamp))
        w = WrenchStamped()
        w.header.stamp = stamp
        sensor_pub.publish(w)
        js = JointState(name=[f"j{i}" for i in range(8)], position=rng.normal(size=8).tolist())
        js.header.stamp = stamp
        state_pub.publish(js)
        time.sleep(1.0 / rate_hz)
    executor.shutdown(timeout_sec=10)
    spinner.join(timeout=10)  # a spin thread still running at exit aborts the process (seen on a loaded machine)
    return {**percentiles(latencies), "camera_rate_hz": rate_hz}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--json", help="write the figures to this file")
    parser.add_argument("--image-size", default="640x480", help="WIDTHxHEIGHT of the two camera views")
    args = parser.parse_args()
    global IMAGE_HW
    w, h = (int(v) for v in args.image_size.split("x"))
    IMAGE_HW = (h, w)
    torch.set_num_threads(2)
    with tempfile.TemporaryDirectory() as tmp:
        ckpt = make_checkpoint(Path(tmp))
        ctx = rclpy.Context()
        rclpy.init(context=ctx, domain_id=int(os.environ.get("ROS_DOMAIN_ID", "77")))
        params = [Parameter("regression_checkpoint", value=ckpt), Parameter("rate_hz", value=0.0),
                  Parameter("min_interval_s", value=0.02), Parameter("slop_s", value=0.01),
                  Parameter("command_interface", value="none"), Parameter("input_timeout_s", value=0.0),
                  Parameter("autostart", value=False)]
        node = PolicyNode(context=ctx, parameter_overrides=params)
        node.trigger_configure()  # configured, not active: part 1 drives the node's pieces without its worker
        figures = {"overhead": overhead(node, args.iters)}
        node.inputs.clear()  # the end-to-end part starts from fresh inputs
        node.trigger_activate()
        figures["end_to_end"] = end_to_end(ctx, node, args.seconds, 10.0)
        node.shutdown()
        rclpy.try_shutdown(context=ctx)
    print(f"{'stage':<22}{'median ms':>12}{'p95 ms':>10}")
    for name, row in {**figures["overhead"], "camera->chunk (e2e)": figures["end_to_end"]}.items():
        print(f"{name:<22}{row['median_ms']:>12.2f}{row['p95_ms']:>10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
