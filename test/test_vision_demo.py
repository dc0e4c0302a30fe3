"""`vla demo --vision`: the observation variants are config (state.columns + views), the closed loop
reads the simulator's state by name, training keeps snapshots, the probe measures what it should, and
the quick variant of the whole experiment writes a complete report."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml

from vla_models import ConfigError, PolicyConfig, load_policy
from vla_models.constants import OBS_STATE
from vla_training.cli import main as vla
from vla_training.evaluation.evaluate import _sim_observation, sim_state_columns
from vla_training.demos.probe import RidgeProbe, score
from vla_training.data.sim import STATE_NAMES, SimEnv
from vla_training.demos.vision_demo import VARIANTS

ROOT = Path(__file__).resolve().parents[1]


def _flat(d, prefix=""):
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def test_blind_and_seeing_differ_only_in_views_and_backbone():
    blind, sees = (PolicyConfig.from_file(VARIANTS[v]) for v in ("blind", "sees"))
    a, b = _flat(blind.to_dict()), _flat(sees.to_dict())
    assert {k for k in a if a[k] != b[k]} == {"views", "backbone.type", "backbone.freeze", "backbone.min_pixels",
                                              "backbone.max_pixels", "backbone.freeze_word_embeddings"}
    assert set(blind.state.columns) <= set(STATE_NAMES)
    assert not any(c.startswith(("obj_", "goal_", "prev_")) for c in blind.state.columns)  # no object, no hole
    assert sees.backbone.type == "qwen_vl" and not sees.backbone.freeze and sees.views
    trains = {v: yaml.safe_load(VARIANTS[v].read_text())["train"] for v in VARIANTS}
    assert {k for k in trains["sees"] if trains["sees"][k] != trains["blind"].get(k)} == {"backbone_lr_scale"}


def test_state_columns_pick_by_name_and_name_what_is_missing():
    config = PolicyConfig.from_file(VARIANTS["blind"])
    assert config.state.column_indices(STATE_NAMES) == [0, 1, 2, 3]
    assert config.state.column_indices(["gripper", "hand_z", "hand_y", "hand_x"]) == [3, 2, 1, 0]
    with pytest.raises(KeyError) as err:
        config.state.column_indices(["hand_x", "hand_y"])
    assert err.value.args[0] == ["hand_z", "gripper"]
    with pytest.raises(ConfigError, match="state.columns: expected unique names"):
        config.replace(**{"state.columns": ["hand_x", "hand_x", "hand_y", "gripper"]})


def test_the_closed_loop_reads_the_named_state_columns():
    config = PolicyConfig.from_file(VARIANTS["blind"]).replace(**{"state.columns": ["goal_y", "hand_x", "gripper",
                                                                                    "obj_0"]})
    env = SimEnv(seed=1, render=False)
    try:
        record = env.reset(0)
    finally:
        env.close()
    obs = _sim_observation(config, record, [record.sensor], 64, "", sim_state_columns(config))
    want = [record.state[STATE_NAMES.index(c)] for c in config.state.columns]
    np.testing.assert_array_equal(obs[OBS_STATE][0], want)
    with pytest.raises(ConfigError, match=r"\['elbow'\] are not in the simulator's state"):
        sim_state_columns(config.replace(**{"state.columns": ["hand_x", "elbow", "gripper", "obj_0"]}))
    with pytest.raises(ConfigError, match="state.dim: the simulator's state has 39 entries"):
        sim_state_columns(config.replace(**{"state.columns": []}))


def test_training_keeps_snapshots_with_their_wall_time(tmp_path):
    data, run = tmp_path / "data", tmp_path / "run"
    assert vla(["data", "sim", "--out", str(data), "--episodes", "2", "--views", "", "--no-progress"]) == 0
    assert vla(["train", "--config", str(VARIANTS["blind"]), "--dataset", str(data), "--out", str(run), "--expert",
                "diffusion", "--max-steps", "4", "--batch-size", "8", "--no-progress", "-o", "train.snapshots=[2,4]",
                "-o", "train.val_fraction=0"]) == 0
    times = []
    for step in (2, 4):
        meta = json.loads((run / f"step_{step}" / "snapshot.json").read_text())
        assert meta["step"] == step and meta["samples"] == 8 * step
        times.append(meta["train_seconds"])
        assert load_policy(run / f"step_{step}").config.state.columns == ["hand_x", "hand_y", "hand_z", "gripper"]
    assert 0 < times[0] < times[1]
    assert not (run / "step_1").exists() and not (run / "step_3").exists()


@pytest.mark.parametrize("item, message", [("train.snapshots=5", "snapshots: expected a list of step numbers"),
                                           ("train.snapshots=[0,10]", "snapshots: expected a list of step numbers"),
                                           ("train.backbone_lr_scale=-1", "backbone_lr_scale: expected a number >= 0")])
def test_bad_snapshot_steps_or_backbone_lr_are_named(tmp_path, item, message, capsys):
    assert vla(["train", "--config", str(VARIANTS["blind"]), "--dataset", str(tmp_path), "--out", str(tmp_path / "run"),
                "--no-progress", "-o", item]) == 2
    assert message in capsys.readouterr().err


def test_the_probe_baseline_is_the_backbone_training_started_from(tmp_path):
    import torch

    from vla_training.training.config import load_train_config
    from vla_training.training.train import Trainer
    from vla_training.demos.vision_demo import initial_policy

    data = tmp_path / "data"
    assert vla(["data", "sim", "--out", str(data), "--episodes", "1", "--image-size", "56", "--no-progress"]) == 0
    train, config = load_train_config({"config": str(VARIANTS["sees"]), "dataset": str(data), "out": str(tmp_path / "r"),
                                       "expert": "diffusion", "progress": False,
                                       "set": ["backbone.min_pixels=3136", "backbone.max_pixels=3136"]})
    started = dict(Trainer(train, config).policy.backbone.named_parameters())
    initial = dict(initial_policy(config).backbone.named_parameters())
    assert started.keys() == initial.keys() and all(torch.equal(started[k], initial[k]) for k in started)


def test_ridge_probe_finds_a_linear_map_and_not_noise():
    rng = np.random.default_rng(0)
    x, w = rng.normal(size=(300, 40)), rng.normal(size=(40, 6)) * 0.01
    y = x @ w + rng.normal(size=6) * 0.1
    probe = RidgeProbe().fit(x[:200], y[:200])
    found = score(probe.predict(x[200:]), y[200:])
    assert all(r > 0.95 for t in ("peg", "hole") for r in found[t]["r2"])
    noise = score(RidgeProbe().fit(x[:200], rng.normal(size=(200, 6))).predict(x[200:]), rng.normal(size=(100, 6)))
    assert all(r < 0.1 for t in ("peg", "hole") for r in noise[t]["r2"])
    exact = score(y, y)
    assert exact["hole"]["mae_mm"] == [0.0, 0.0, 0.0] and exact["peg"]["r2"] == [1.0, 1.0, 1.0]


@pytest.fixture(scope="module")
def quick_data(tmp_path_factory):
    """The quick demo's demonstrations at 56 px, made by the first test that runs and reused by the next."""
    return tmp_path_factory.mktemp("vision_data")


def test_quick_vision_demo_writes_the_whole_report(tmp_path, quick_data):
    assert vla(["demo", "--vision", "--quick", "--out", str(tmp_path / "runs"), "--data", str(quick_data),
                "--image-size", "56", "-o", "fusion.mode=gated"]) == 0
    text = (tmp_path / "runs" / "report.md").read_text()
    result = json.loads((tmp_path / "runs" / "report" / "report.json").read_text())
    assert [row["step"] for row in result["curve"]] == result["budget"]["snapshots"] and len(result["curve"]) == 3
    for row in result["curve"]:
        for variant in ("blind", "sees"):
            cl = row[variant]
            assert 0 <= cl["success_rate"] <= 1 and cl["episodes"] == 2 * len(cl["seeds"])
            assert math.isfinite(cl["train_minutes"]) and cl["train_minutes"] > 0
    # the default recipe's expert is deterministic: one closed loop per snapshot (not counted twice)
    assert result["expert"] == "regression" and result["budget"]["sample_seeds"] == [0]
    assert result["curve"][-1]["sees"]["seeds"] == [0]
    assert not list((tmp_path / "runs" / "report").glob("eval_*seed1*"))
    assert "--image-size 56 -o fusion.mode=gated" in result["command"]
    seen = load_policy(tmp_path / "runs" / "sees" / f"step_{result['budget']['steps']}").config
    assert seen.fusion.mode == "gated" and seen.backbone.max_pixels == 56 * 56 and seen.expert.type == "regression"
    assert seen.backbone.freeze_word_embeddings  # the recipe's config, kept under -o
    stages = result["latency"]["sees"]["regression"]
    assert stages["backbone_ms"]["median"] > 0 and "backbone_ms" not in result["latency"]["blind"]["regression"]
    for name in ("trained", "initial"):
        values = [v for t in ("peg", "hole") for v in result["probe"][name][t]["mae_mm"]]
        assert all(math.isfinite(v) for v in values)
    assert len(result["probe"]["placements"]) == 2
    assert all(isinstance(row["success"], bool) for row in result["probe"]["placements"])
    for line in ("| A blind | regression |", "| B sees | regression |", "## Targets", "B >= 80 %", "| trained |",
                 "| initial |", "expert regression (one pass)"):  # result["sampling"]: a one-pass expert
        assert line in text
    for image in ("vision_success.png", "vision_probe.png", "rollout_0_sheet.png"):
        assert (tmp_path / "runs" / "report" / image).stat().st_size > 0 and f"report/{image}" in text


def test_a_lever_on_the_seeing_policy_alone_at_a_fixed_step_budget(tmp_path, quick_data):
    """`--seeing-only --steps N`: B alone, N steps (no calibration), and an override A could not take
    (augmentation of camera views) reaches B's training; `--expert diffusion` trains B with that expert and
    pools its last snapshot over both sampling seeds."""
    assert vla(["demo", "--vision", "--quick", "--seeing-only", "--expert", "diffusion", "--steps", "6",
                "--out", str(tmp_path / "runs"),
                "--data", str(quick_data), "--image-size", "56", "-o", "train.augment={'*': {shift: 2}}"]) == 0
    result = json.loads((tmp_path / "runs" / "report" / "report.json").read_text())
    assert result["variants"] == ["sees"] and set(result["configs"]) == {"sees"} and not (tmp_path / "runs" / "blind").exists()
    assert result["budget"]["steps"] == 6 and result["budget"]["snapshots"] == [1, 3, 6]
    assert result["budget"]["calibrated_steps_per_s"] is None and not list((tmp_path / "runs").glob("calibrate_*"))
    assert all(set(row) == {"step", "sees"} for row in result["curve"]) and set(result["latency"]) == {"sees"}
    assert result["command"] == ("vla demo --vision --seeing-only --expert diffusion --quick --image-size 56 "
                                 "--steps 6 -o train.augment={'*': {shift: 2}}")
    run = tmp_path / "runs" / "sees"
    config = json.loads((run / "train_config.json").read_text())
    assert config["train"]["augment"] == {"*": {"shift": 2}} and config["policy"]["expert"]["type"] == "diffusion"
    assert result["expert"] == "diffusion" and result["budget"]["sample_seeds"] == [0, 1]
    assert result["curve"][-1]["sees"]["seeds"] == [0, 1] and result["curve"][-1]["sees"]["episodes"] == 4
    text = (tmp_path / "runs" / "report.md").read_text()
    assert "B (sees) alone" in text and "| A blind |" not in text and "B >= 80 %" in text
    assert result["sampling"] == "ddim-10" and "expert diffusion (ddim-10)" in text


def test_the_expert_comparison_where_the_policy_sees(tmp_path, quick_data):
    """`--compare-experts`: the seeing policy with each expert, the same steps and recipe; the stochastic
    experts pooled over both sampling seeds, regression (deterministic) once; a table with intervals."""
    assert vla(["demo", "--vision", "--quick", "--compare-experts", "--steps", "4", "--out", str(tmp_path / "runs"),
                "--data", str(quick_data), "--image-size", "56", "-o", "backbone.freeze_word_embeddings=true"]) == 0
    result = json.loads((tmp_path / "runs" / "report" / "experts.json").read_text())
    assert list(result["experts"]) == ["regression", "diffusion", "flow"] and result["budget"]["steps"] == 4
    for expert, row in result["experts"].items():
        assert row["seeds"] == ([0] if expert == "regression" else [0, 1])
        assert row["episodes"] == 2 * len(row["seeds"]) and 0 <= row["success_rate"] <= 1
        assert row["latency_ms"] and all(ms > 0 for ms in row["latency_ms"].values())
        config = load_policy(tmp_path / "runs" / expert / "step_4").config
        assert config.expert.type == expert and config.backbone.freeze_word_embeddings
    text = (tmp_path / "runs" / "experts.md").read_text()
    assert all(f"| {e} |" in text for e in result["experts"])
    assert (tmp_path / "runs" / "report" / "vision_experts.png").stat().st_size > 0 and "report/vision_experts.png" in text
    assert result["command"] == ("vla demo --vision --compare-experts --quick --image-size 56 --steps 4 "
                                 "-o backbone.freeze_word_embeddings=true")


def test_vision_demo_cli_refuses_another_task_or_no_minutes(capsys):
    assert vla(["demo", "--vision", "--task", "pick-place-v3"]) == 2
    assert "--vision: the experiment is defined for peg-insert-side-v3" in capsys.readouterr().err
    assert vla(["demo", "--vision", "--minutes", "0"]) == 2
    assert "--minutes: expected a training budget > 0" in capsys.readouterr().err
    assert vla(["demo", "--vision", "--image-size", "100"]) == 2
    assert "--image-size: expected a multiple of 28 px" in capsys.readouterr().err
    assert vla(["demo", "--vision", "--placement-seeds", "0"]) == 2
    assert "--placement-seeds: expected at least 1" in capsys.readouterr().err
    assert vla(["demo", "-o", "fusion.mode=gated"]) == 2
    assert "apply to --vision only" in capsys.readouterr().err
    assert vla(["demo", "--seeing-only"]) == 2
    assert "apply to --vision only" in capsys.readouterr().err
    assert vla(["demo", "--vision", "--compare-experts", "--seeing-only"]) == 2
    assert "--seeing-only and --expert do not apply" in capsys.readouterr().err
    assert vla(["demo", "--vision", "--compare-experts", "--expert", "flow"]) == 2
    assert "--seeing-only and --expert do not apply" in capsys.readouterr().err
    assert vla(["demo", "--expert", "flow"]) == 2
    assert "apply to --vision only" in capsys.readouterr().err
    assert vla(["demo", "--vision", "--steps", "3"]) == 2
    assert "--steps: expected at least 4 training steps" in capsys.readouterr().err
