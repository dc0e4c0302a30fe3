"""Every ROS benchmark script under bench/ runs at a tiny size (smoke): it starts, finishes and writes its
JSON, through the node's public API, so that none can rot."""

import json
import os
import subprocess
import sys
from pathlib import Path

from ros_helpers import reserve_domain_ids

ROOT = Path(__file__).resolve().parents[1]


def _run(script: str, args: list[str], tmp_path: Path, **env_vars: str) -> dict:
    out = tmp_path / f"{Path(script).stem}.json"
    env = dict(os.environ, **reserve_domain_ids(), ROS_AUTOMATIC_DISCOVERY_RANGE="LOCALHOST", **env_vars)
    proc = subprocess.run([sys.executable, str(ROOT / script), *args, "--json", str(out)], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return json.loads(out.read_text())


def test_ros_node_latency_smoke(tmp_path):
    figures = _run("bench/ros_node_latency.py", ["--iters", "5", "--seconds", "2", "--image-size", "160x120"], tmp_path)
    overhead = figures["overhead"]["node_overhead"]
    assert overhead["n"] == 5 and 0 < overhead["median_ms"] < 1000
    assert figures["end_to_end"]["n"] >= 1


def test_async_node_smoke(tmp_path):
    """One configuration (each is the same code with other node parameters; four node processes cost a minute)."""
    figures = _run("bench/async_node.py", ["--seconds", "2", "--configs", "diffusion:async"], tmp_path)
    (result,) = figures["results"]
    assert result["async"] and result["policy_type"] == "diffusion" and result["chunks"] > 0


def test_jtc_timing_smoke(tmp_path):
    figures = _run("bench/jtc_timing.py", ["--latency", "0.1", "--seconds", "1"], tmp_path)
    (result,) = figures["results"]
    assert result["latency_s"] == 0.1 and result["commands"] >= 1 and 0 < result["max_speed_ratio"] <= 1.05


def test_import_memory_smoke(tmp_path):
    figures = _run("bench/import_memory.py", ["--gb", "0.01", "--workdir", str(tmp_path / "work")], tmp_path)
    assert figures["bag_bytes"] > 5e6 and figures["import_peak_rss_mb"] > 0
    assert figures["frames_bytes"] == figures["session"]["jpeg_bytes"]  # frames stored as recorded


def test_train_throughput_smoke(tmp_path):
    (tmp_path / "tmp").mkdir()
    figures = _run("bench/train_throughput.py", ["--steps", "3", "--warmup-steps", "1", "--episodes", "1", "--only",
                                                 "tiny stage 2 (LoRA)"], tmp_path, TMPDIR=str(tmp_path / "tmp"))
    (row,) = figures.values()
    assert row["samples_per_s"] > 0 and 0 <= row["data_wait_frac"] < 1 and row["peak_rss_mb"] > 100
    assert row["window_steps"] == 2  # the steps after the warm-up
    assert row["disk_mb"] < 5  # no checkpoint written (the tiny backbone alone is ~40 MB): metrics and logs only
    assert not list((tmp_path / "tmp").iterdir())  # runs and datasets deleted


def test_train_throughput_gpu_runs_are_valid_configs_for_their_data(tmp_path):
    """The 3B runs `bench/gpu.sh` starts on a GPU (not trainable on this CPU): every one is a valid
    `vla train` configuration, and the synthetic dataset written for it passes the data check."""
    sys.path.insert(0, str(ROOT / "bench"))
    from train_throughput import runs, write_dataset

    from vla_training.cli import build_parser
    from vla_training.training.commands import train_overrides
    from vla_training.data.episodes import list_episodes
    from vla_training.data.samples import check_episode
    from vla_training.training.config import load_train_config

    gpu_runs = runs("3b")
    assert len(gpu_runs) == 4
    for i, (name, (spec, shape)) in enumerate(gpu_runs.items()):
        data = write_dataset(tmp_path / f"d{i}", {**shape, "image": (36, 64)}, episodes=1, steps=3)
        args = build_parser().parse_args(["train", *[a for a in spec if a != "--cache"], "--dataset", str(data),
                                          "--out", str(tmp_path / "run")])
        train, policy = load_train_config(train_overrides(args))
        assert policy.backbone.size == "3b" and len(policy.views) == shape["views"], name
        assert (train.stage, policy.backbone.lora.enabled) == ((2, True) if "stage 2" in name else (1, False)), name
        for episode in list_episodes(data):
            check_episode(episode, policy)


def test_gpu_script_smoke(tmp_path):
    """`bash bench/gpu.sh` (the whole GPU run: backbone profile, stage latencies, denoising loop, training)
    at the smallest sizes on this CPU: every step runs and writes its JSON."""
    env = dict(os.environ, DEVICE="cpu", SPEC="tiny", IMAGE_SIZE="56x56", REPEATS="2", QUICK="1", OUT=str(tmp_path),
               PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu.sh")], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for name in ("profile_tiny", "bench_tiny", "denoise_loop", "train_throughput_tiny"):
        assert json.loads((tmp_path / f"{name}.json").read_text()), name


def test_lerobot_roundtrip_smoke(tmp_path):
    figures = _run("bench/lerobot_roundtrip.py", ["--quick", "--workdir", str(tmp_path / "work")], tmp_path)
    arrays = figures["round_trip_arrays"]
    assert arrays["episodes"] == 2 and arrays["actions_equal"] and arrays["state_equal"] and arrays["sensor_equal"]
    assert figures["episodes"] == 2 and figures["difference"] <= 1


def test_lerobot_bag_memory_smoke(tmp_path):
    figures = _run("bench/lerobot_bag_memory.py", ["--seconds", "2", "--vcodec", "h264", "--workdir",
                                                   str(tmp_path / "work")], tmp_path)
    export = figures["export_lerobot"]
    assert export["frames"] >= 5 and export["sensor_window"][1] == 1026 and 0 < export["peak_rss_mb"] < 1024


def test_demonstrator_chunks_smoke(tmp_path):
    figures = _run("bench/demonstrator_chunks.py", ["--episodes", "1", "--delays", "2", "--max-steps", "12",
                                                    "--strategies", "switch"], tmp_path)
    (result,) = figures["results"]
    assert result["delay"] == 2 and result["episodes"] == 1 and result["per_episode"][0]["length"] == 12
