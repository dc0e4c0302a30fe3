"""`vla train` end to end: both experts, CPU and tiny-Qwen presets, feature cache, LoRA stage 2,
kill -9 and --resume, and a 2-process gloo torchrun."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from vla_models import load_policy
from vla_training.cli import main as vla
from vla_training.data.episodes import list_episodes
from vla_training.data.samples import ChunkDataset

ROOT = Path(__file__).resolve().parents[1]
CPU, TINY = str(ROOT / "config" / "train_cpu.yaml"), str(ROOT / "config" / "train_tiny.yaml")


@pytest.fixture(scope="module")
def sim_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "data"
    assert vla(["data", "sim", "--out", str(out), "--episodes", "3", "--image-size", "32", "--no-progress"]) == 0
    return str(out)


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("expert", ["regression", "diffusion", "flow"])
def test_train_cpu_preset(tmp_path, sim_data, expert):
    run = tmp_path / "run"
    assert vla(["train", "--config", CPU, "--dataset", sim_data, "--out", str(run), "--expert", expert,
                "--max-steps", "6", "--batch-size", "8", "--checkpoint-every", "3", "--no-progress"]) == 0
    metrics = _metrics(run)
    assert [m["step"] for m in metrics if "train/loss" in m] == [1, 2, 3, 4, 5, 6]
    assert sum("val/loss" in m for m in metrics) == 2
    if expert == "diffusion":
        assert "train/timestep_dist" in metrics[0]
    if expert != "regression":  # the experts that sample from noise keep an EMA of their weights
        assert (run / "last_ema" / "config.json").exists()
    policy = load_policy(run / "best")
    assert policy.config.expert.type == expert and policy.normalizer.fitted
    sample = ChunkDataset(list_episodes(sim_data), policy.config, 64)[0]
    obs = {k: v[None] if hasattr(v, "shape") else v for k, v in sample.items() if k in ("state", "sensor")}
    assert policy.predict_action_chunk(obs, seed=0).shape == (1, 16, 4)


def test_train_tiny_qwen_with_feature_cache_then_lora(tmp_path, sim_data):
    cache, run1, run2 = tmp_path / "cache", tmp_path / "stage1", tmp_path / "stage2"
    args = ["train", "--config", TINY, "--dataset", sim_data, "--expert", "diffusion", "--max-steps", "3",
            "--batch-size", "4", "--feature-cache", str(cache), "--no-progress"]
    assert vla(args + ["--out", str(run1)]) == 0
    entries = sorted(cache.glob("*/*.safetensors"))
    assert entries
    stamps = {p: p.stat().st_mtime_ns for p in entries}
    assert vla(args + ["--out", str(tmp_path / "stage1b"), "--expert", "regression"]) == 0  # reused across experts
    assert sorted(cache.glob("*/*.safetensors"))[:len(entries)] == entries
    assert all(p.stat().st_mtime_ns >= stamps[p] for p in entries)
    assert vla(["train", "--config", TINY, "--dataset", sim_data, "--expert", "diffusion", "--max-steps", "2",
                "--batch-size", "4", "--stage", "2", "--init", str(run1 / "best"), "--out", str(run2),
                "--no-progress"]) == 0
    policy = load_policy(run2 / "last")
    assert policy.config.backbone.lora.enabled
    assert any("lora_" in n for n, _ in policy.named_parameters())


def _train_cmd(run: Path, data: str, steps: int, accum: int = 1) -> list[str]:
    return [str(Path(sys.executable).parent / "vla"), "train", "--config", CPU, "--dataset", data, "--out", str(run),
            "--expert", "diffusion", "--max-steps", str(steps), "--batch-size", "8", "--checkpoint-every", "4",
            "--grad-accum", str(accum), "--no-progress"]


@pytest.mark.parametrize("accum", [1, 3])  # 3: 24 steps x 24 samples cross an epoch end, killed mid-epoch
def test_kill_9_then_resume_continues_exactly(tmp_path, sim_data, accum):
    steps = 24
    reference = tmp_path / "reference"
    subprocess.run(_train_cmd(reference, sim_data, steps, accum), check=True, capture_output=True)
    run = tmp_path / "killed"
    proc = subprocess.Popen(_train_cmd(run, sim_data, steps, accum), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = run / "last" / "trainer_state.json"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text())["progress"]["step"] >= 8:
            break
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = json.loads(state.read_text())["progress"]["step"]
    assert killed_at < steps, "the run finished before it could be killed"
    load_policy(run / "last")  # whatever the moment, last/ is a loadable checkpoint
    subprocess.run(_train_cmd(run, sim_data, steps, accum) + ["--resume"], check=True, capture_output=True)
    resumed, ref = load_policy(run / "last").state_dict(), load_policy(reference / "last").state_dict()
    assert json.loads(state.read_text())["progress"]["step"] == steps
    for key in ref:
        assert torch.allclose(resumed[key], ref[key], atol=1e-6), key  # same schedule, optimiser, data, noise


def test_resume_without_a_run_is_a_clear_error(tmp_path, sim_data, capsys):
    assert vla(["train", "--config", CPU, "--dataset", sim_data, "--out", str(tmp_path / "none"), "--resume",
                "--max-steps", "1", "--no-progress"]) == 2
    assert "--resume" in capsys.readouterr().err


def test_torchrun_two_cpu_processes(tmp_path, sim_data):
    run = tmp_path / "ddp"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port", str(29500 + os.getpid() % 400),
                             "-m", "vla_training.cli", "train", "--config", CPU, "--dataset", sim_data, "--out",
                             str(run), "--expert", "regression", "--max-steps", "4", "--batch-size", "4",
                             "--checkpoint-every", "2", "--device", "cpu", "--no-progress"],
                            capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((run / "train_config.json").read_text())["world_size"] == 2
    assert load_policy(run / "last").config.expert.type == "regression"


def test_ema_holds_exactly_the_trainable_parameters_and_averages_like_averaged_model():
    """The frozen tiny Qwen backbone is not copied; the average equals torch's AveragedModel with the same decay."""
    import torch
    from conftest import make_policy
    from torch.optim.swa_utils import AveragedModel

    from vla_training.training.ema import TrainableEMA

    policy = make_policy("tiny", "diffusion")
    trainable = {n for n, p in policy.named_parameters() if p.requires_grad}
    ema = TrainableEMA(policy, max_decay=0.9)
    assert set(ema.shadow) == trainable and not any(n.startswith("backbone.model") for n in ema.shadow)
    assert any(n.startswith("backbone.model") for n, _ in policy.named_parameters())  # it exists, frozen

    def decay(avg, cur, n):
        d = min(0.9, 1.0 - (1.0 + float(n)) ** -0.75)
        return avg * d + cur * (1 - d)

    reference = AveragedModel(policy, avg_fn=decay)
    for step in range(4):
        with torch.no_grad():
            for n, p in policy.named_parameters():
                if p.requires_grad:
                    p.add_(0.01 * (step + 1))
        ema.update(policy)
        reference.update_parameters(policy)
    ref = dict(reference.module.named_parameters())
    assert all(torch.allclose(ema.shadow[n], ref[n], atol=1e-6) for n in trainable)
    live = {n: p.detach().clone() for n, p in policy.named_parameters()}
    with ema.applied(policy):
        assert all(torch.equal(p, ema.shadow[n]) for n, p in policy.named_parameters() if n in trainable)
    assert all(torch.equal(p, live[n]) for n, p in policy.named_parameters())  # restored
    restored = TrainableEMA(policy)
    restored.load_state_dict(ema.state_dict())
    assert restored.n_averaged == 4 and all(torch.equal(restored.shadow[n], ema.shadow[n]) for n in trainable)


@pytest.mark.parametrize("world, samples, accum", [(2, 23, 3), (3, 10, 1), (1, 17, 2)])
def test_epoch_order_gives_every_rank_whole_steps_of_equal_size(world, samples, accum):
    """DistributedSampler semantics: each rank the same number of micro-batches (a multiple of grad_accum),
    together covering the epoch's permutation (padded by wrapping); no rank waits in an all-reduce."""
    from types import SimpleNamespace

    from vla_training.training.train import Trainer

    per_rank = []
    for rank in range(world):
        fake = SimpleNamespace(train_cfg=SimpleNamespace(seed=0, batch_size=2, grad_accum=accum),
                               train_ds=range(samples), world=world, rank=rank)
        per_rank.append(Trainer._epoch_order(fake, epoch=1))
        assert len(per_rank[-1]) == Trainer.steps_per_epoch(fake) * accum
    assert len({len(b) for b in per_rank}) == 1 and all(len(b) % accum == 0 for b in per_rank)
    seen = np.concatenate([np.concatenate(b) for b in per_rank])
    assert set(seen.tolist()) <= set(range(samples)) and len(seen) >= samples - world * 2 * accum


def test_weight_decay_skips_norms_biases_and_embeddings():
    from conftest import make_policy

    from vla_training.training.train import param_groups

    policy = make_policy("tiny", "diffusion")
    groups = param_groups(policy, 1e-3, 0.01)
    names = {id(p): n for n, p in policy.named_parameters()}
    decayed = {names[id(p)] for g in groups if g["weight_decay"] > 0 for p in g["params"]}
    plain = {names[id(p)] for g in groups if g["weight_decay"] == 0 for p in g["params"]}
    assert decayed and plain and not decayed & plain
    assert not any(n.endswith(".bias") or "norm" in n.lower() for n in decayed)
    assert all(policy.get_parameter(n).ndim >= 2 for n in decayed)


def _cached_batches(policy, root: Path, batches: int = 2, size: int = 3, seed: int = 0) -> list[dict]:
    """Batches as the trainer hands them to the feature cache: frames by reference into a written dataset."""
    from vla_training.data.episodes import EpisodeData, list_episodes, write_episode
    from vla_training.data.samples import ChunkDataset, collate

    cfg, n = policy.config, batches * size
    rng, t = np.random.default_rng(seed), np.arange(n) * 0.1
    write_episode(root, "episode_000000", EpisodeData(
        instruction="insert", actions=rng.normal(size=(n, cfg.action_dim)), actions_t=t,
        action_names=[f"a{i}" for i in range(cfg.action_dim)], state=rng.normal(size=(n, cfg.state.dim)), state_t=t,
        state_names=[f"s{i}" for i in range(cfg.state.dim)], sensor=rng.normal(size=(n, cfg.sensor.channels)),
        sensor_t=t, images={v: rng.integers(0, 256, (n, 56, 56, 3), dtype=np.uint8) for v in cfg.views},
        images_t={v: t for v in cfg.views}))
    dataset = ChunkDataset(list_episodes(root), cfg, frame_refs=True)
    return [collate([dataset[i] for i in range(b * size, (b + 1) * size)]) for b in range(batches)]


@pytest.mark.parametrize("fusion", ["concat", "cross_attention"])
def test_feature_cache_keeps_what_the_fusion_needs_and_a_second_epoch_hits(tmp_path, fusion, monkeypatch):
    import torch
    from conftest import make_policy
    from safetensors.torch import load_file

    from vla_training.data.episodes import Episode
    from vla_training.training.feature_cache import FeatureCache

    policy = make_policy("tiny", "regression", fusion=fusion)
    cache = FeatureCache(tmp_path / "cache", policy)
    batches = _cached_batches(policy, tmp_path / "data")
    decoded = []
    frame = Episode.frame
    monkeypatch.setattr(Episode, "frame", lambda self, view, k: decoded.append((view, k)) or frame(self, view, k))
    for epoch in range(2):
        for batch in batches:
            features = cache.features(batch)
        assert cache.counts()["misses"] == 6 and cache.counts()["hits"] == 6 * epoch  # second epoch: all hits
        assert len(decoded) == 6 * len(policy.config.views)  # frames are decoded for misses only, never for a hit
    entry = load_file(next((tmp_path / "cache").glob("*/*.safetensors")))
    if fusion == "concat":  # pooled fusions read the pooled vector only
        assert set(entry) == {"pooled"} and features.tokens.shape[1] == 0
    else:
        assert entry["tokens"].dtype == torch.bfloat16 and features.tokens.shape[1] > 0
    refs = batches[1]["frame_refs"]
    images = {v: np.stack([Episode(r[v][0]).frame(v, r[v][1]) for r in refs]) for v in policy.config.views}
    direct = policy.backbone(policy.backbone.preprocess(images, batches[1]["instruction"], policy.config.views))
    assert torch.allclose(features.pooled, direct.pooled, atol=1e-5)
    assert cache.size == sum(p.stat().st_size for p in (tmp_path / "cache").glob("*/*.safetensors"))
    small = FeatureCache(tmp_path / "cache", policy, max_bytes=cache.size // 3)  # reads the index once
    small.features(_cached_batches(policy, tmp_path / "other", batches=1, size=1, seed=9)[0])  # a miss
    assert small.size <= cache.size // 3 + max(small._index.values()) and len(small._index) < 7


def test_cache_build_in_shards_then_training_only_hits(tmp_path, sim_data):
    cache = tmp_path / "cache"
    for shard in ("0/2", "1/2", "0/2"):  # two processes' shares; the third run resumes: nothing recomputed
        assert vla(["cache", "build", "--config", TINY, "--dataset", sim_data, "--cache", str(cache), "--shard", shard,
                    "--batch-size", "4", "--no-progress"]) == 0
    run = tmp_path / "run"
    assert vla(["train", "--config", TINY, "--dataset", sim_data, "--expert", "regression", "--max-steps", "3",
                "--batch-size", "4", "--feature-cache", str(cache), "--val-fraction", "0", "--no-progress",
                "--out", str(run)]) == 0
    last = [m for m in _metrics(run) if "cache/misses" in m][-1]
    assert last["cache/misses"] == 0 and last["cache/hits"] == 12
    assert vla(["cache", "build", "--config", TINY, "--dataset", sim_data, "--cache", str(cache), "--shard", "2/2"]) == 2


def _state_only_dataset(root: Path, steps: int) -> str:
    """One episode of `steps` samples of a 3-d state and 2-d actions (no sensor: no BatchNorm between ranks)."""
    from vla_training.data.episodes import EpisodeData, write_episode

    rng = np.random.default_rng(0)
    t = np.arange(steps) * 0.1
    write_episode(root, "episode_000000", EpisodeData(
        instruction="", actions=rng.normal(size=(steps, 2)), actions_t=t, action_names=["dx", "dy"],
        state=rng.normal(size=(steps, 3)), state_t=t, state_names=["a", "b", "c"]))
    return str(root)


def test_two_process_torchrun_equals_one_process_with_the_same_global_batch(tmp_path):
    """13 samples (not divisible by 2), accumulation 3, 3 epochs: both ranks end identical (RUN/ranks.json)
    and equal a 1-process run whose micro-batch is the two ranks' together (horizon 1: no padded rows, so
    the ranks' mean losses average to the global one)."""
    data = _state_only_dataset(tmp_path / "data", 13)
    common = ["--config", "cpu", "-o", "sensor.channels=0", "-o", "state.dim=3", "-o", "action_dim=2",
              "-o", "action_names=[dx,dy]", "-o", "horizon=1", "--expert", "regression", "--dataset", data,
              "--epochs", "3", "--grad-accum", "3", "--val-fraction", "0", "--lr", "0.01", "--device", "cpu",
              "--no-progress"]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    torchrun = str(Path(sys.executable).parent / "torchrun")
    two = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port", str(29900 + os.getpid() % 90), "-m",
                          "vla_training.cli", "train", *common, "--batch-size", "2", "--out", str(tmp_path / "two")],
                         capture_output=True, text=True, env=env, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    digests = json.loads((tmp_path / "two" / "ranks.json").read_text())["weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]
    assert vla(["train", *common, "--batch-size", "4", "--out", str(tmp_path / "one")]) == 0
    steps = [m["step"] for m in _metrics(tmp_path / "two") if "train/loss" in m]
    assert steps == [m["step"] for m in _metrics(tmp_path / "one") if "train/loss" in m] == [1, 2, 3]
    one, two = load_policy(tmp_path / "one" / "last"), load_policy(tmp_path / "two" / "last")
    # compared as functions: with one query and one condition token, attention's query/key side (and the
    # norms feeding only it) gets rounding noise as gradient, which Adam scales to full steps in any other
    # float order (those weights differ by up to 1e-3 and do not change any output)
    obs = {"state": np.array(list_episodes(data)[0].array("state"), np.float32)}
    assert torch.allclose(one.predict_action_chunk(obs), two.predict_action_chunk(obs), atol=1e-4)
    untrained = json.loads((tmp_path / "two" / "train_config.json").read_text())["total_steps"]
    assert untrained == 3


def test_loader_workers_read_the_same_batches_in_the_same_order(tmp_path, sim_data):
    """Samples read in 2 worker processes train exactly what the training process alone would."""
    runs = {}
    for workers in (0, 2):
        run = tmp_path / f"w{workers}"
        assert vla(["train", "--config", CPU, "--dataset", sim_data, "--out", str(run), "--expert", "regression",
                    "--max-steps", "5", "--batch-size", "8", "--grad-accum", "2", "--loader-workers", str(workers),
                    "--no-progress"]) == 0
        runs[workers] = load_policy(run / "last").state_dict()
    assert all(torch.equal(runs[0][k], runs[2][k]) for k in runs[0])


def test_backbone_inputs_are_made_in_the_loader_workers(tmp_path, sim_data):
    """Stage 2 (the backbone runs): the image processor in 2 loader workers trains exactly what it trains in
    the training process; `--pixels device` (pixel values from the frames on the training device) trains too."""
    runs = {}
    for name, extra in {"in-process": ["--loader-workers", "0"], "workers": ["--loader-workers", "2"],
                        "device": ["--loader-workers", "2", "--pixels", "device"]}.items():
        run = tmp_path / name
        assert vla(["train", "--config", TINY, "--dataset", sim_data, "--out", str(run), "--expert", "regression",
                    "--stage", "2", "--max-steps", "3", "--batch-size", "4", "--val-fraction", "0", *extra,
                    "--no-progress"]) == 0
        runs[name] = load_policy(run / "last").state_dict()
        assert all(np.isfinite(m["train/loss"]) for m in _metrics(run) if "train/loss" in m)
    assert all(torch.equal(runs["in-process"][k], runs["workers"][k]) for k in runs["in-process"])
    assert not all(torch.equal(runs["in-process"][k], runs["device"][k]) for k in runs["in-process"])
