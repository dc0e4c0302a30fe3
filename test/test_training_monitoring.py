"""What a training run reports and the limits it runs under: windowed throughput, the GPU memory cap, runs without
checkpoints (benchmarks), and wandb's run id kept across --resume."""

import json
import shutil
import sys
import types

import pytest
import torch
from test_training import _state_only_dataset
from test_training_scale import STATE_ONLY

from vla_models import ConfigError
from vla_training.cli import main as vla
from vla_training.training import monitoring
from vla_training.training.monitoring import ThroughputWindow, apply_memory_cap


def test_throughput_is_measured_over_recent_steps_not_since_the_start(monkeypatch):
    clock = [0.0]
    monkeypatch.setattr(monitoring.time, "perf_counter", lambda: clock[0])
    meter = ThroughputWindow(steps=3)
    clock[0] = 10.0  # a 10 s warm-up step (compilation, cache filling) with 4 samples, all of it waiting for data
    meter.step(4, 10.0)
    for _ in range(5):  # then 1 s steps of 4 samples, 0.1 s of each waiting for data
        clock[0] += 1.0
        meter.step(4, 0.1)
    rates = meter.rates()
    assert rates["train/samples_per_s"] == pytest.approx(4.0)  # since step 0: 24 / 15 = 1.6
    assert rates["train/data_wait_frac"] == pytest.approx(0.1)  # since step 0: 10.5 / 15 = 0.7
    assert rates["train/samples_total"] == 24 and rates["train/wall_s_total"] == pytest.approx(15.0)


def test_memory_cap_sets_the_fraction_of_this_gpu(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: types.SimpleNamespace(total_memory=80 * 2**30))
    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", lambda f, device: calls.append((f, device)))
    device = torch.device("cuda", 1)
    assert apply_memory_cap(device, 24) == pytest.approx(0.3) and calls == [(pytest.approx(0.3), device)]
    assert apply_memory_cap(device, None) is None and len(calls) == 1
    with pytest.raises(ConfigError, match="more than this GPU has"):
        apply_memory_cap(device, 100)
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        apply_memory_cap(torch.device("cpu"), 24)


def test_a_run_without_checkpoints_writes_none(tmp_path):
    data = _state_only_dataset(tmp_path / "data", 8)
    run = tmp_path / "run"
    assert vla(["train", *STATE_ONLY, "--dataset", data, "--expert", "diffusion", "--batch-size", "2", "--max-steps",
                "4", "--checkpoint-every", "2", "-o", "train.save_checkpoints=false", "--out", str(run)]) == 0
    assert not [p for p in run.iterdir() if (p / "config.json").exists()]  # no best/, last/, last_ema/
    steps = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in steps if "train/samples_total" in m] == [1, 2, 3, 4]


class _FakeWandb(types.ModuleType):
    """wandb's surface the trainer uses: init(id, resume) -> run with log(); util.generate_id()."""

    def __init__(self):
        super().__init__("wandb")
        self.inits, self.ids = [], iter(["first1", "second2"])
        self.util = types.SimpleNamespace(generate_id=lambda: next(self.ids))

    def init(self, **kwargs):
        self.inits.append(kwargs)
        return types.SimpleNamespace(log=lambda metrics, step: None)


def test_resume_continues_the_same_wandb_run(tmp_path, monkeypatch):
    fake = _FakeWandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    data = _state_only_dataset(tmp_path / "data", 8)
    common = ["train", *STATE_ONLY, "--dataset", data, "--expert", "regression", "--batch-size", "2",
              "--checkpoint-every", "2", "--wandb", "--out", str(tmp_path / "run")]
    assert vla([*common, "--max-steps", "2"]) == 0
    assert vla([*common, "--max-steps", "4", "--resume"]) == 0
    (first, resumed) = fake.inits
    assert first["id"] == "first1" and first["resume"] == "allow"
    assert resumed["id"] == "first1" and resumed["resume"] == "must"  # not a new run
    assert (tmp_path / "run" / "wandb_run_id").read_text() == "first1"


def test_resume_loads_the_weights_into_the_model_without_building_a_second_policy(tmp_path, monkeypatch):
    """A second policy (a 3B backbone on every rank's CPU) is not built to read last/; the model being trained
    holds last/'s weights when the loop starts. (That a resumed run equals an uninterrupted one:
    test_training_scale_2's loader test.)"""
    from vla_models import load_policy
    from vla_models.policy import VLAPolicy
    from vla_training.training.train import Trainer

    data = _state_only_dataset(tmp_path / "data", 8)
    common = ["train", *STATE_ONLY, "--dataset", data, "--expert", "diffusion", "--batch-size", "2",
              "--checkpoint-every", "2", "--out", str(tmp_path / "run")]
    assert vla([*common, "--max-steps", "2"]) == 0
    shutil.copytree(tmp_path / "run" / "last", tmp_path / "step2")
    built, at_start = [], {}
    init, run = VLAPolicy.__init__, Trainer.run
    monkeypatch.setattr(VLAPolicy, "__init__", lambda self, *a, **k: built.append(1) or init(self, *a, **k))
    monkeypatch.setattr(Trainer, "run", lambda self: at_start.update(
        {k: v.clone() for k, v in self.policy.state_dict().items()}) or run(self))
    assert vla([*common, "--max-steps", "4", "--resume"]) == 0
    assert len(built) == 1  # the model being trained, nothing else
    monkeypatch.undo()
    saved = load_policy(tmp_path / "step2").state_dict()
    assert saved.keys() == at_start.keys() and all(torch.equal(saved[k], at_start[k]) for k in saved)
