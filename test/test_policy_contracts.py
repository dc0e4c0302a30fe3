"""Shape and behaviour contracts of the policy API, over experts x fusion modes x backbones."""

import itertools

import numpy as np
import pytest
import torch
from conftest import BACKBONES, EXPERTS, FUSIONS, make_policy

from vla_models import ObservationError
from vla_models.constants import ACTION, OBS_IMAGES, OBS_SENSOR, OBS_SENSOR_MASK, OBS_STATE
from vla_models.testing import fake_batch, fake_observation

GRID = list(itertools.product(BACKBONES, EXPERTS, FUSIONS))


@pytest.mark.parametrize("backbone, expert, fusion", GRID)
def test_shapes_loss_and_gradients(backbone, expert, fusion):
    policy = make_policy(backbone, expert, fusion)
    cfg = policy.config
    chunk = policy.predict_action_chunk(fake_observation(cfg, 2), seed=0)
    assert chunk.shape == (2, cfg.horizon, cfg.action_dim) and torch.isfinite(chunk).all()
    samples = policy.predict_action_chunk(fake_observation(cfg, 2), num_samples=3, seed=0)
    assert samples.shape == (2, 3, cfg.horizon, cfg.action_dim)
    policy.train()
    loss, logs = policy(fake_batch(cfg, 3))
    assert loss.ndim == 0 and torch.isfinite(loss) and logs["loss"] == pytest.approx(loss.item())
    loss.backward()
    assert policy.expert.head[-1].weight.grad.abs().sum() > 0
    assert policy.fusion.modality_embed.grad is not None


@pytest.mark.parametrize("expert", EXPERTS)
def test_sensor_window_of_any_length_and_missing_sensor(expert):
    policy = make_policy("cpu", expert)
    cfg = policy.config
    for length in (1, 17, cfg.sensor.window, 3 * cfg.sensor.window):
        out = policy.predict_action_chunk(fake_observation(cfg, 2, sensor_length=length), seed=0)
        assert out.shape == (2, cfg.horizon, cfg.action_dim)
    obs = fake_observation(cfg, 2)
    with_sensor = policy.predict_action_chunk(obs, seed=0)
    obs[OBS_SENSOR_MASK] = np.array([True, False])
    masked = policy.predict_action_chunk(obs, seed=0)
    assert torch.allclose(masked[0], with_sensor[0], atol=1e-5)  # rows are independent
    assert not torch.allclose(masked[1], with_sensor[1])  # the missing-sensor embedding replaced the data
    obs[OBS_SENSOR] = obs[OBS_SENSOR] * 0 + 123.0  # what a masked row holds does not matter
    assert torch.allclose(policy.predict_action_chunk(obs, seed=0)[1], masked[1], atol=1e-5)


def test_regression_never_sees_the_target_chunk():
    """The seed fed the ground-truth chunk in as `z_chunk`; our prediction must not depend on targets."""
    policy = make_policy("cpu", "regression")
    captured = []
    policy.expert.head.register_forward_hook(lambda mod, inp, out: captured.append(out.detach().clone()))
    batch = fake_batch(policy.config, 2)
    policy(batch)
    batch[ACTION] = batch[ACTION] * 100 + 7
    policy(batch)
    assert torch.equal(captured[0], captured[1])


@pytest.mark.parametrize(
    "mutate, words",
    [
        (lambda o: o.pop(OBS_STATE), ["state", "missing", "(B, S)"]),
        (lambda o: o.__setitem__(OBS_STATE, np.zeros((2, 5), np.float32)), ["state", "(2, 39)", "(2, 5)"]),
        (lambda o: o.__setitem__(OBS_SENSOR, np.zeros((2, 10, 3), np.float32)), ["sensor", "12", "(2, 10, 3)"]),
        (lambda o: o[OBS_SENSOR].__setitem__((0, 0, 0), np.nan), ["sensor", "NaN"]),
    ],
)
def test_bad_observations_get_clear_errors(mutate, words):
    policy = make_policy("cpu")
    obs = fake_observation(policy.config, 2)
    mutate(obs)
    with pytest.raises(ObservationError) as info:
        policy.predict_action_chunk(obs)
    for word in words:
        assert word in str(info.value)


def test_missing_view_is_named():
    policy = make_policy("tiny")
    obs = fake_observation(policy.config, 1)
    del obs[OBS_IMAGES]["wrist"]
    with pytest.raises(ObservationError, match=r"missing view\(s\) \['wrist'\]"):
        policy.predict_action_chunk(obs)


def test_unfitted_normaliser_is_refused():
    from vla_models import CheckpointError, build_policy, preset

    policy = build_policy(preset("cpu"))
    with pytest.raises(CheckpointError, match="normaliser statistics"):
        policy.predict_action_chunk(fake_observation(policy.config, 1))


def test_predictions_are_in_action_units():
    """Samples are un-normalised with the dataset statistics (here: actions around 1000 +- 1)."""
    policy = make_policy("cpu", "diffusion")
    policy.normalizer["action"].fit(torch.randn(500, policy.config.action_dim) * 0.5 + 1000.0)
    out = policy.predict_action_chunk(fake_observation(policy.config, 2), seed=0)
    assert (out > 990).all() and (out < 1010).all()


@pytest.mark.parametrize("expert", EXPERTS)
def test_inference_runs_in_eval_mode_and_restores_the_mode(expert):
    policy = make_policy("cpu", expert, **{"expert.dropout": 0.5})
    obs = fake_observation(policy.config, 1)
    policy.eval()
    reference = policy.predict_action_chunk(obs, seed=0)
    assert not policy.training and not any(m.training for m in policy.modules())
    policy.train()
    again = policy.predict_action_chunk(obs, seed=0)  # dropout must be off for the call
    torch.testing.assert_close(again, reference)
    assert policy.training and all(m.training for m in policy.modules())
