"""Training at scale, part 3: bounded normaliser statistics, the logged loss averaged over the ranks,
DDP without find_unused_parameters, persistent loader workers with one OpenCV thread, and the GPU's
device, fork_rng and RNG state (checked on CPU with stand-ins)."""

import itertools
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_training import _state_only_dataset
from test_training_scale import STATE_ONLY

from vla_training.cli import main as vla
from vla_training.data.samples import fit_statistics



# -- 1. normaliser statistics from a bounded sample ---------------------------------------------------
class _Counted:
    """An episode's array that counts the rows read from it."""

    def __init__(self, data, counter):
        self.data, self.counter = data, counter

    def __len__(self):
        return len(self.data)

    @property
    def shape(self):
        return self.data.shape

    def __getitem__(self, index):
        rows = self.data[index]
        self.counter[0] += len(rows)
        return rows

    def __array__(self, dtype=None, copy=None):
        self.counter[0] += len(self.data)
        return self.data if dtype is None else self.data.astype(dtype)


class _Stats:
    def fit(self, data):
        self.mean, self.std, self.rows = data.mean(0), data.std(0), len(data)


def test_fit_statistics_reads_a_bounded_sample_close_to_the_full_statistics():
    rng, counter = np.random.default_rng(1), [0]
    data = {key: [rng.normal(3.0 + e, 2.0, size=(400 + 37 * e, width)) for e in range(20)]
            for key, width in (("actions", 2), ("sensor", 4))}
    episodes = [SimpleNamespace(has=lambda key: True, meta={},
                                array=lambda key, e=e: _Counted(data[key][e], counter)) for e in range(20)]
    config = SimpleNamespace(state=SimpleNamespace(dim=0), sensor=SimpleNamespace(channels=4))
    fits = []
    for _ in range(2):
        counter[0] = 0
        policy = SimpleNamespace(config=config, normalizer={"action": _Stats(), "sensor": _Stats()})
        fit_statistics(policy, episodes, max_rows=1000)
        assert counter[0] <= 2 * 1000, f"{counter[0]} rows read for a budget of 1000 per field"  # 15 030 in all
        fits.append(policy.normalizer)
    for key, name in (("actions", "action"), ("sensor", "sensor")):
        full = np.concatenate(data[key])
        sample = fits[0][name]
        assert sample.rows == 1000
        assert np.allclose(sample.mean.numpy(), full.mean(0), atol=0.25)
        assert np.allclose(sample.std.numpy(), full.std(0), rtol=0.1)
        assert torch.equal(sample.mean, fits[1][name].mean) and torch.equal(sample.std, fits[1][name].std)


# -- 2./3. the logged loss is the ranks' mean; DDP does not search for unused parameters ---------------
RECORDING_RUNNER = textwrap.dedent("""
    import atexit, json, os, sys
    import torch
    from vla_models.policy import VLAPolicy
    from vla_training.cli import main

    losses, ddp = [], []
    forward, ddp_init = VLAPolicy.forward, torch.nn.parallel.DistributedDataParallel.__init__

    def recorded(self, batch):
        loss, logs = forward(self, batch)
        losses.append(logs["loss"])
        return loss, logs

    def recorded_init(self, *args, **kwargs):
        ddp.append(kwargs.get("find_unused_parameters", False))
        ddp_init(self, *args, **kwargs)

    VLAPolicy.forward, torch.nn.parallel.DistributedDataParallel.__init__ = recorded, recorded_init
    atexit.register(lambda: open(os.path.join(os.environ["RECORD"], f"rank{os.environ['RANK']}.json"), "w").write(
        json.dumps({"losses": losses, "find_unused_parameters": ddp})))
    sys.exit(main(sys.argv[1:]))
""")


@pytest.fixture(scope="module")
def two_rank_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ranks")
    data = _state_only_dataset(tmp / "data", 8)
    (tmp / "runner.py").write_text(RECORDING_RUNNER)
    (tmp / "record").mkdir()
    torchrun = str(Path(sys.executable).parent / "torchrun")
    result = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port", str(29700 + os.getpid() % 150),
                             str(tmp / "runner.py"), "train", *STATE_ONLY, "-o", "horizon=2", "--expert", "regression",
                             "--dataset", data, "--max-steps", "3", "--batch-size", "2", "--grad-accum", "2",
                             "--checkpoint-every", "3", "--lr", "0.01", "--out", str(tmp / "run")],
                            capture_output=True, text=True, timeout=300,
                            env=dict(os.environ, OMP_NUM_THREADS="1", RECORD=str(tmp / "record")))
    assert result.returncode == 0, result.stderr[-3000:]
    ranks = [json.loads((tmp / "record" / f"rank{r}.json").read_text()) for r in (0, 1)]
    metrics = [json.loads(line) for line in (tmp / "run" / "metrics.jsonl").read_text().splitlines()]
    return ranks, [m["train/loss"] for m in metrics if "train/loss" in m]


def test_logged_loss_is_the_mean_over_the_ranks(two_rank_run):
    ranks, logged = two_rank_run
    per_rank = [np.asarray(r["losses"]).reshape(3, 2).mean(1) for r in ranks]  # 3 steps x 2 micro-batches
    assert not np.allclose(per_rank[0], per_rank[1])  # the ranks read different samples
    assert np.allclose(logged, (per_rank[0] + per_rank[1]) / 2, rtol=1e-6, atol=1e-9), (logged, per_rank)


def test_ddp_does_not_search_for_unused_parameters(two_rank_run):
    ranks, _ = two_rank_run
    assert [r["find_unused_parameters"] for r in ranks] == [[False], [False]]


@pytest.mark.parametrize("backbone, lora", [("cpu", False), ("tiny", False), ("tiny", True)])
def test_every_trainable_parameter_takes_part_in_the_forward(backbone, lora):
    """What find_unused_parameters=False relies on: every expert and fusion gives each trainable parameter
    a gradient; only a trainable backbone behind cached features could be skipped (the cache refuses one)."""
    sys.path.insert(0, str(Path(__file__).parent))
    from conftest import make_policy

    from vla_models.testing import fake_batch
    from vla_training.training.distributed import find_unused_parameters

    fusions, experts = ["concat", "cross_attention", "gated", "none"], ["regression", "diffusion", "flow"]
    # every expert x fusion on the fast backbone; with a Qwen backbone (a few seconds each) every fusion, and
    # every expert, once
    combos = itertools.product(experts, fusions) if backbone == "cpu" else zip(itertools.cycle(experts), fusions)
    for expert, fusion in combos:
        policy = make_policy(backbone, expert, fusion, **({"backbone.lora.enabled": True} if lora else {})).train()
        loss, _ = policy(fake_batch(policy.config, 2))
        loss.backward()
        assert [n for n, p in policy.named_parameters() if p.requires_grad and p.grad is None] == [], (expert, fusion)
        assert find_unused_parameters(policy, None, cached_features=False) is False
        assert find_unused_parameters(policy, True, cached_features=False) is True
    assert find_unused_parameters(policy, None, cached_features=True) is lora


# -- 4. persistent loader workers, one OpenCV thread each, resume exact -------------------------------
def test_loader_workers_persist_across_epochs_with_one_cv2_thread_and_resume_exactly(tmp_path, monkeypatch):
    import cv2

    from vla_models import load_policy
    from vla_training.data.samples import ChunkDataset
    from vla_training.training.train import Trainer

    record = tmp_path / "workers.txt"
    getitem = ChunkDataset.__getitem__

    def recorded(self, idx):
        with open(record, "a") as fh:
            fh.write(f"{os.getpid()} {cv2.getNumThreads()}\n")
        return getitem(self, idx)

    monkeypatch.setattr(ChunkDataset, "__getitem__", recorded)
    checkpoint, run = Trainer.checkpoint, tmp_path / "resumed"

    def kept(self):  # last/ as written at step 5 (mid-epoch 1), to resume from
        checkpoint(self)
        if self.rank == 0 and self.progress["step"] == 5:
            shutil.copytree(self.out / "last", run / "last")

    monkeypatch.setattr(Trainer, "checkpoint", kept)
    threads = cv2.getNumThreads()
    cv2.setNumThreads(3)  # the training process's; forked workers inherit it unless limited
    try:
        data = _state_only_dataset(tmp_path / "data", 8)
        common = [*STATE_ONLY, "-o", "horizon=2", "--expert", "diffusion", "--dataset", data, "--batch-size", "2",
                  "--loader-workers", "2", "--checkpoint-every", "5", "--max-steps", "10"]
        assert vla(["train", *common, "--out", str(tmp_path / "straight")]) == 0  # 4 micro-batches an epoch: 3 epochs
        seen = [line.split() for line in record.read_text().splitlines()]
        assert {int(n) for _, n in seen} == {1}, "a loader worker runs OpenCV on more than one thread"
        assert len({pid for pid, _ in seen}) == 2, "the loader's workers were started again for every epoch"
        ref = load_policy(tmp_path / "straight" / "last").state_dict()
        assert vla(["train", *common, "--resume", "--out", str(run)]) == 0
    finally:
        cv2.setNumThreads(threads)
    resumed = load_policy(run / "last").state_dict()
    assert all(torch.equal(resumed[k], ref[k]) for k in ref)


# -- 5./6. the GPU: this rank's device first, fork_rng of it alone, its RNG state resumed ---------------
class _Stop(Exception):
    pass


def test_distributed_cuda_sets_the_local_device_before_the_process_group(monkeypatch):
    from vla_training.training.config import TrainConfig
    from vla_training.training.train import Trainer

    calls = []
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.distributed, "init_process_group", lambda *a, **k: calls.append("init_process_group"))

    def set_device(device):
        calls.append(("set_device", torch.device(device)))
        raise _Stop

    monkeypatch.setattr(torch.cuda, "set_device", set_device)
    with pytest.raises(_Stop):
        Trainer(TrainConfig(device="auto"), None)
    assert calls == [("set_device", torch.device("cuda", 1))]  # before init_process_group (NCCL) and the rest


@pytest.mark.parametrize("device, expected", [(torch.device("cpu"), []), (torch.device("cuda", 1), [1])])
def test_validation_forks_the_rng_of_this_device_only(monkeypatch, device, expected):
    import contextlib

    from vla_training.training.train import Trainer

    forked = []

    @contextlib.contextmanager
    def fork_rng(*args, **kwargs):
        forked.append(kwargs.get("devices", args[0] if args else None))
        yield

    monkeypatch.setattr(torch.random, "fork_rng", fork_rng)
    fake = SimpleNamespace(val_ds=range(3), train_cfg=SimpleNamespace(batch_size=2), device=device,
                           _evaluated=lambda: contextlib.nullcontext(_Model()), _batch=lambda ds, idx: {},
                           policy=SimpleNamespace(train=lambda: None))
    assert Trainer.validate(fake) == 1.0
    assert forked == [expected]  # the default (None) forks, and opens a context on, every visible GPU


class _Model:
    def eval(self):
        return self

    def __call__(self, batch):
        return torch.tensor(1.0), {}


def test_cuda_rng_state_of_each_rank_is_saved_and_restored(tmp_path, monkeypatch):
    from vla_training.training.distributed import gather_rng_states
    from vla_training.training.train_state import load_train_state, save_train_state

    cuda_states = [torch.arange(16, dtype=torch.uint8) + 16 * rank for rank in range(2)]
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": cuda_states[torch.device(device).index])
    cpu, cuda = gather_rng_states(False, 1, torch.device("cuda", 1))
    assert torch.equal(cpu[0], torch.get_rng_state()) and torch.equal(cuda[0], cuda_states[1])
    assert gather_rng_states(False, 1, torch.device("cpu"))[1] is None
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    save_train_state(tmp_path, optimizer, scheduler, {"step": 0}, rng_states=[torch.get_rng_state() for _ in range(2)],
                     cuda_rng_states=cuda_states)
    restored = []
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device="cuda": restored.append((state, device)))
    for rank in (0, 1):
        load_train_state(tmp_path, optimizer, scheduler, rank=rank, device=torch.device("cuda", rank))
        assert torch.equal(restored[-1][0], cuda_states[rank]) and restored[-1][1] == torch.device("cuda", rank)
    load_train_state(tmp_path, optimizer, scheduler, rank=1, device=torch.device("cpu"))
    assert len(restored) == 2  # on CPU the GPU state is not touched
