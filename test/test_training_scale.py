"""Training at scale, part 2: every DDP rank draws its own noise (weights stay equal), gradient
accumulation steps and ends whatever the epoch size, the seed importer labels actions only over one
control period and never looks into the future, --init names what does not fit, and the backbone's
configured dtype is honoured."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from test_training import _state_only_dataset

from vla_models import ConfigError, load_policy
from vla_training.cli import main as vla
from vla_training.data.episodes import list_episodes
from vla_training.training.train import Trainer

STATE_ONLY = ["--config", "cpu", "-o", "sensor.channels=0", "-o", "state.dim=3", "-o", "action_dim=2",
              "-o", "action_names=[dx,dy]", "--val-fraction", "0", "--device", "cpu", "--no-progress"]


def _steps(run: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()
            if "train/loss" in json.loads(line)]


# -- 1. every rank its own noise ------------------------------------------------------------------
# torchrun runs this in each rank's own process (its own RNG): it records the noise and the
# timesteps/times the expert draws in training, then runs `vla train`.
RECORDING_RUNNER = textwrap.dedent("""
    import atexit, json, os, sys
    import torch
    from vla_models.experts.diffusion import DiffusionExpert
    from vla_models.experts.flow import FlowExpert
    from vla_training.cli import main

    draws = []
    randn_like = torch.randn_like

    def recorded_randn_like(*args, **kwargs):
        out = randn_like(*args, **kwargs)
        draws.append({"noise": out.flatten()[:6].tolist()})
        return out

    def recording(loss):
        def wrapper(self, *args, **kwargs):
            value, logs = loss(self, *args, **kwargs)
            draws[-1]["time"] = logs.get("timestep_mean", logs.get("time_mean"))
            return value, logs
        return wrapper

    torch.randn_like = recorded_randn_like
    DiffusionExpert.loss, FlowExpert.loss = recording(DiffusionExpert.loss), recording(FlowExpert.loss)
    atexit.register(lambda: open(os.path.join(os.environ["DRAWS"], f"rank{os.environ['RANK']}.json"), "w").write(
        json.dumps(draws)))
    sys.exit(main(sys.argv[1:]))
""")


@pytest.mark.parametrize("expert", ["diffusion", "flow"])
def test_ddp_ranks_draw_their_own_noise_and_keep_equal_weights(tmp_path, expert):
    data = _state_only_dataset(tmp_path / "data", 8)
    runner = tmp_path / "runner.py"
    runner.write_text(RECORDING_RUNNER)
    run, draws = tmp_path / "run", tmp_path / "draws"
    draws.mkdir()
    env = dict(os.environ, OMP_NUM_THREADS="1", DRAWS=str(draws))
    torchrun = str(Path(sys.executable).parent / "torchrun")
    result = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port", str(29100 + os.getpid() % 300),
                             str(runner), "train", *STATE_ONLY, "-o", "horizon=4", "--expert", expert, "--dataset",
                             data, "--max-steps", "3", "--batch-size", "2", "--checkpoint-every", "3", "--out",
                             str(run)], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rank0, rank1 = (json.loads((draws / f"rank{r}.json").read_text()) for r in (0, 1))
    assert len(rank0) == len(rank1) >= 3  # one draw per micro-batch on each rank
    for a, b in zip(rank0, rank1):
        assert a["noise"] != b["noise"], "both ranks drew the same noise"
    assert [d["time"] for d in rank0] != [d["time"] for d in rank1], "both ranks drew the same timesteps/times"
    digests = json.loads((run / "ranks.json").read_text())["weights_sha256"]
    assert len(digests) == 2 and digests[0] == digests[1]  # DDP: one model, whatever noise each rank drew
    state = json.loads((run / "last" / "trainer_state.json").read_text())
    assert state["progress"]["step"] == 3


def test_resume_restores_each_ranks_own_rng(tmp_path):
    """The trainer state holds one RNG state per rank; each rank gets its own back."""
    from vla_training.training.train_state import load_train_state, save_train_state

    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(model.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 1.0)
    states = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        states.append(torch.get_rng_state())
    save_train_state(tmp_path, optimizer, scheduler, {"step": 0}, rng_states=states)
    for rank in (0, 1):
        torch.manual_seed(99)
        load_train_state(tmp_path, optimizer, scheduler, rank=rank)
        assert torch.equal(torch.get_rng_state(), states[rank])


# -- 2. gradient accumulation steps and ends -------------------------------------------------------
@pytest.mark.parametrize("world", [1, 2, 3])
@pytest.mark.parametrize("samples", [1, 5, 13])
@pytest.mark.parametrize("accum", [1, 2, 4, 7])
def test_accumulation_steps_and_ends_whatever_the_epoch_size(world, samples, accum):
    """Every rank's epoch is the same number (> 0) of micro-batches, whole steps where there are enough;
    the planned steps are reached by the micro-batches of finitely many epochs (about `epochs`), the
    accumulation carried across epoch ends when an epoch has fewer micro-batches than grad_accum."""
    epochs = 3
    fakes = [SimpleNamespace(train_cfg=SimpleNamespace(seed=0, batch_size=2, grad_accum=accum),
                             train_ds=range(samples), world=world, rank=rank) for rank in range(world)]
    lengths = {len(Trainer._epoch_order(fake, epoch=e)) for fake in fakes for e in range(epochs)}
    assert len(lengths) == 1  # no rank waits in an all-reduce for another
    micro = lengths.pop()
    assert micro >= 1 and micro == Trainer.micro_batches_per_epoch(fakes[0])
    assert micro % accum == 0 or micro < accum
    steps = Trainer.planned_steps(fakes[0], epochs)
    assert steps >= 1 and epochs * micro <= steps * accum < epochs * micro + accum  # every epoch, then the step
    # the loop's bookkeeping: a step every grad_accum micro-batches, counted across epoch ends
    consumed, done, epoch = 0, 0, 0
    while done < steps:
        assert epoch < epochs + accum, "the planned steps are never reached"
        consumed += len(Trainer._epoch_order(fakes[0], epoch=epoch))
        done, epoch = consumed // accum, epoch + 1


def test_accumulation_larger_than_an_epoch_finishes_and_steps(tmp_path):
    """5 samples, batch 2 on 2 ranks: 1 micro-batch per rank per epoch, grad_accum 3: each optimiser step
    takes 3 epochs. The run ends, steps 2 times, and both ranks end with the same weights."""
    data = _state_only_dataset(tmp_path / "data", 5)
    args = [*STATE_ONLY, "-o", "horizon=1", "--expert", "regression", "--dataset", data, "--batch-size", "2",
            "--grad-accum", "3", "--lr", "0.01"]
    run = tmp_path / "one"
    result = subprocess.run([sys.executable, "-m", "vla_training.cli", "train", *args, "--max-steps", "2", "--out",
                             str(run)], capture_output=True, text=True, timeout=120,
                            env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _steps(run) == [1, 2]
    assert "accumulates across epoch ends" in result.stdout
    ddp = tmp_path / "two"
    torchrun = str(Path(sys.executable).parent / "torchrun")
    result = subprocess.run([torchrun, "--nproc_per_node=2", "--master_port", str(29400 + os.getpid() % 90), "-m",
                             "vla_training.cli", "train", *args, "--epochs", "4", "--out", str(ddp)],
                            capture_output=True, text=True, timeout=120, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert _steps(ddp) == [1, 2]  # 4 epochs x 1 micro-batch / 3, rounded up
    digests = json.loads((ddp / "ranks.json").read_text())["weights_sha256"]
    assert digests[0] == digests[1]


# -- 3. the seed importer: one-period actions, no look into the future --------------------------------
def _session_with_a_hole(root: Path) -> tuple[float, object]:
    """A legacy session (View1 anchors every 0.5 s; View5 starts 4 ms after View1) whose robot state
    starts 6 ms after the first frame and has a 0.1 s hole around the 4th frame (that frame has no
    state: the pose moves two periods between the 3rd and the 5th frame), imported."""
    from seed_recordings import legacy_session, states_csv

    from vla_training.data.import_seed import import_seed

    t0 = 1761551500.0
    session = legacy_session(root / "src", "recv_all_20251027_120000", t0, frames=6)
    csv_path = session / "robot_state_20251027_120000.csv"
    states_csv(csv_path, t0 + 0.006 + np.arange(0, 300) * 0.01)  # pose_y = 2 mm per 10 ms row
    header, *rows = csv_path.read_text().splitlines()
    hole = [r for r in rows if not t0 + 1.45 <= float(r.split(",")[0]) <= t0 + 1.55]
    csv_path.write_text("\n".join([header, *hole]) + "\n")
    import_seed(root / "src", root / "out", progress=False)
    (ep,) = list_episodes(root / "out")
    return t0, ep


def test_import_seed_never_labels_a_delta_across_a_gap_as_one_action(tmp_path):
    _, ep = _session_with_a_hole(tmp_path)
    t, actions = np.asarray(ep.array("actions_t")), np.asarray(ep.array("actions"))
    assert np.all(np.abs(actions[:, 1] - 100.0) <= 2.0 + 1e-6), \
        f"dy per action (mm), one period is ~100: {actions[:, 1].tolist()}"
    assert ep.meta["unmatched_frames"] == 1 and ep.meta["dropped_at_gaps"] == 1
    assert len(actions) == 3  # frames 1, 2 and 5 (of 6): 4 has no state, 3's delta spans the hole, 6 is the last
    assert np.all(np.rint(np.diff(t) / 0.5) >= 1)


def test_import_seed_samples_never_see_a_state_or_frame_stamped_after_them(tmp_path):
    t0, ep = _session_with_a_hole(tmp_path)
    t = np.asarray(ep.array("actions_t"))
    for stream in ["state_t", *(f"images/{v}_t" for v in ep.views)]:
        first = float(np.asarray(ep.array(stream))[0])
        assert first <= t[0] + 1e-9, f"the first sample (t = {t[0] - t0:.3f}) sees {stream} stamped {first - t0:.3f}"
    # each action is the change from the pose the sample observes (the latest state <= t) to the pose
    # observed at the next anchor frame
    state_t, pose_y = np.asarray(ep.array("state_t")), np.asarray(ep.array("state"))[:, 7]
    anchors = np.asarray(ep.array(f"images/{ep.meta['anchor_view']}_t"))
    following = anchors[np.searchsorted(anchors, t + 1e-9, side="right")]

    def observed(times):
        return pose_y[np.searchsorted(state_t, times + 1e-9, side="right") - 1]

    assert np.allclose(np.asarray(ep.array("actions"))[:, 1], observed(following) - observed(t), atol=1e-4)


# -- 4. --init names what does not fit --------------------------------------------------------------
def test_init_with_another_horizon_is_an_error_naming_the_tensors_unless_partial(tmp_path, capsys):
    data = _state_only_dataset(tmp_path / "data", 6)
    common = [*STATE_ONLY, "--expert", "regression", "--dataset", data, "--batch-size", "2", "--max-steps", "1"]
    assert vla(["train", *common, "-o", "horizon=4", "--out", str(tmp_path / "h4")]) == 0
    source = load_policy(tmp_path / "h4" / "last").state_dict()
    capsys.readouterr()
    init = ["--init", str(tmp_path / "h4" / "last"), "-o", "horizon=2", "--lr", "1e-12"]
    assert vla(["train", *common, *init, "--out", str(tmp_path / "error")]) == 2
    err = capsys.readouterr().err
    assert "--init" in err and "expert.queries: checkpoint (1, 4, " in err and "vs model (1, 2, " in err, err
    assert "--init-partial" in err
    assert not (tmp_path / "error" / "last").exists()  # stopped before training
    with pytest.raises(ConfigError, match="expert.queries"):  # the train field, as a config file sets it
        from vla_training.training.train import train
        train({"config": "cpu", "dataset": data, "out": str(tmp_path / "error2"), "init": str(tmp_path / "h4" / "last"),
               "expert": "regression", "max_steps": 1, "progress": False,
               "set": ["sensor.channels=0", "state.dim=3", "action_dim=2", "action_names=[dx,dy]", "horizon=2",
                       "train.val_fraction=0", "train.device=cpu"]})
    assert vla(["train", *common, *init, "--init-partial", "--out", str(tmp_path / "partial")]) == 0
    out = capsys.readouterr().out
    assert "warning" in out and "expert.queries: checkpoint (1, 4, 128) vs model (1, 2, 128)" in out
    partial = load_policy(tmp_path / "partial" / "last").state_dict()
    loaded = [k for k in partial if k.startswith("expert.decoder.") and k in source]
    assert loaded and all(torch.allclose(partial[k], source[k], atol=1e-6) for k in loaded)  # lr 1e-12: as loaded
    capsys.readouterr()
    assert vla(["train", *common, "-o", "horizon=4", "--init", str(tmp_path / "h4" / "last"), "--lr", "1e-12",
                "--out", str(tmp_path / "same")]) == 0
    assert "warning" not in capsys.readouterr().out  # everything fits: no word


def test_init_of_stage_2_from_stage_1_keeps_the_backbone_weights_under_lora(tmp_path):
    """A layer LoRA wraps in stage 2 (q_proj -> q_proj.base_layer) starts from stage 1's weights of it."""
    from conftest import make_policy

    stage1 = make_policy("tiny", "regression", seed=1)
    stage1.save(tmp_path / "stage1")
    stage2 = make_policy("tiny", "regression", seed=2, **{"backbone.lora.enabled": True})
    Trainer._init_from(SimpleNamespace(policy=stage2, train_cfg=SimpleNamespace(init_partial=False), rank=0),
                       str(tmp_path / "stage1"))
    source, loaded = stage1.state_dict(), stage2.state_dict()
    wrapped = [k for k in loaded if ".base_layer." in k]
    assert wrapped
    for key in wrapped:
        assert torch.equal(loaded[key], source[key.replace(".base_layer.", ".")]), key
    assert all(torch.equal(loaded[k], v) for k, v in source.items() if k in loaded and not k.startswith("normalizer."))


def test_init_partial_is_a_train_field(tmp_path):
    from vla_training.training.config import load_train_config

    config = tmp_path / "c.yaml"
    config.write_text("policy: {state: {dim: 3}}\ntrain: {init_partial: true}\n")
    assert load_train_config({"config": str(config)})[0].init_partial is True
    assert load_train_config({"config": "cpu", "set": ["train.init_partial=true"]})[0].init_partial is True
    with pytest.raises(ConfigError, match="init_partial: expected true or false"):
        load_train_config({"config": "cpu", "set": ["train.init_partial=maybe"]})


# -- 5. the backbone's dtype --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype, expected", [("float32", torch.float32), ("float16", torch.float16),
                                             ("bfloat16", torch.bfloat16), ("auto", torch.float32)])
def test_backbone_parameters_follow_the_configured_dtype(dtype, expected):
    from vla_models import preset
    from vla_models.backbones.qwen_vl import QwenVLBackbone

    backbone = QwenVLBackbone(preset("tiny", **{"backbone.dtype": dtype}).backbone)
    assert {p.dtype for p in backbone.model.parameters()} == {expected}


@pytest.mark.parametrize("dtype, expected", [("float32", torch.float32), ("float16", torch.float16),
                                             ("auto", torch.bfloat16)])
def test_pretrained_backbone_loads_in_the_configured_dtype(tmp_path, dtype, expected):
    """Weights saved in bfloat16 (as Qwen's are) load as backbone.dtype says; auto keeps the saved dtype."""
    from vla_models import preset
    from vla_models.backbones.qwen_vl import QwenVLBackbone

    saved = QwenVLBackbone(preset("tiny", **{"backbone.dtype": "bfloat16"}).backbone)
    saved.model.save_pretrained(tmp_path / "qwen")
    saved.save_files(tmp_path / "qwen")
    config = preset("tiny", **{"backbone.dtype": dtype, "backbone.pretrained": str(tmp_path / "qwen")}).backbone
    assert {p.dtype for p in QwenVLBackbone(config).model.parameters()} == {expected}
