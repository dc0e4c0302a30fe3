"""Every ROS benchmark script under bench/ runs at a tiny size (smoke): it starts, finishes and writes its
JSON, through the node's public API, so that none can rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, args: list[str], tmp_path: Path) -> dict:
    out = tmp_path / f"{Path(script).stem}.json"
    env = dict(os.environ, ROS_DOMAIN_ID=str(60 + os.getpid() % 40), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST")
    proc = subprocess.run([sys.executable, str(ROOT / script), *args, "--json", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_ros_node_latency_smoke(tmp_path):
    figures = _run("bench/ros_node_latency.py", ["--iters", "5", "--seconds", "2", "--image-size", "160x120"], tmp_path)
    overhead = figures["overhead"]["node_overhead"]
    assert overhead["n"] == 5 and 0 < overhead["median_ms"] < 1000
    assert figures["end_to_end"]["n"] >= 1


@pytest.mark.parametrize("seconds", [2])
def test_async_node_smoke(tmp_path, seconds):
    figures = _run("bench/async_node.py", ["--seconds", str(seconds)], tmp_path)
    assert figures


def test_import_memory_smoke(tmp_path):
    figures = _run("bench/import_memory.py", ["--gb", "0.01", "--workdir", str(tmp_path / "work")], tmp_path)
    assert figures["bag_bytes"] > 5e6 and figures["import_peak_rss_mb"] > 0
    assert figures["frames_bytes"] == figures["session"]["jpeg_bytes"]  # frames stored as recorded


def test_denoise_loop_smoke(tmp_path):
    figures = _run("bench/denoise_loop.py", ["--device", "cpu", "--hidden", "64", "--layers", "1", "--heads", "4",
                                             "--feedforward", "128", "--tokens", "8", "--steps", "3", "--repeats", "2"],
                   tmp_path)
    assert figures


def test_train_throughput_smoke(tmp_path):
    figures = _run("bench/train_throughput.py", ["--steps", "2", "--episodes", "1", "--only", "tiny stage 2 (LoRA)"],
                   tmp_path)
    (row,) = figures.values()
    assert row["samples_per_s"] > 0 and 0 <= row["data_wait_frac"] < 1 and row["peak_rss_mb"] > 100
