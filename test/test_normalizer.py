import pytest
import torch

from vla_models import ConfigError, build_policy, load_policy, preset, save_policy
from vla_models.constants import ACTION, OBS_STATE
from vla_models.normalizer import FeatureNormalizer
from vla_models.testing import fake_batch


def test_round_trip_and_constant_dimension():
    data = torch.randn(200, 4) * torch.tensor([1.0, 10.0, 0.1, 0.0]) + torch.tensor([0.0, 5.0, -2.0, 1.0])
    for mode in ("min_max", "quantile", "mean_std"):
        norm = FeatureNormalizer(4, mode)
        norm.fit(data)
        z = norm.normalize(data)
        assert torch.isfinite(z).all()
        assert torch.equal(norm.constant_mask, torch.tensor([False, False, False, True]))
        assert torch.all(z[:, 3] == 0)  # the constant gripper dimension normalises to exactly 0
        back = norm.unnormalize(z)
        assert torch.allclose(back, data, atol=1e-4)
        assert torch.all(norm.unnormalize(torch.randn(5, 4))[:, 3] == 1.0)  # and always comes back as itself
    norm = FeatureNormalizer(4, "min_max")
    norm.fit(data)
    z = norm.normalize(data)
    assert z[:, :3].min() >= -1 - 1e-5 and z[:, :3].max() <= 1 + 1e-5


def test_statistics_live_in_the_state_dict():
    a = FeatureNormalizer(3, "mean_std")
    a.fit(torch.randn(50, 3) * 3 + 2)
    b = FeatureNormalizer(3, "mean_std")
    b.load_state_dict(a.state_dict())
    x = torch.randn(7, 3)
    assert torch.equal(a.normalize(x), b.normalize(x)) and bool(b.fitted)


def test_fit_rejects_nan():
    norm = FeatureNormalizer(2, "min_max")
    bad = torch.tensor([[0.0, float("nan")]])
    try:
        norm.fit(bad)
    except ValueError as exc:
        assert "NaN" in str(exc)
    else:
        raise AssertionError("NaN data was accepted")


def test_quantile_mode_ignores_one_spike_that_min_max_lets_compress_the_range():
    torch.manual_seed(0)
    data = torch.rand(1000, 2) * 2 - 1  # uniform in [-1, 1]
    data[500, 0] = 100.0  # one sensor glitch in the recordings
    min_max, quantile = FeatureNormalizer(2, "min_max"), FeatureNormalizer(2, "quantile")
    min_max.fit(data)
    quantile.fit(data)
    typical = torch.tensor([[0.5, 0.5]])
    assert min_max.normalize(typical)[0, 0] < -0.95  # the spike squeezed the whole working range near -1
    assert quantile.normalize(typical)[0, 0] == pytest.approx(0.5, abs=0.05)  # q01..q99 = [-0.98, 0.98] -> [-1, 1]
    assert quantile.normalize(typical)[0, 1] == pytest.approx(0.5, abs=0.05)
    assert quantile.normalize(data)[500, 0] > 50  # the spike itself maps outside [-1, 1], not clipped here


def test_quantile_mode_travels_with_the_checkpoint(tmp_path):
    torch.manual_seed(0)
    policy = build_policy(preset("cpu", **{"normalization.action": "quantile", "normalization.state": "quantile"}))
    batch = fake_batch(policy.config, 64)
    actions = torch.as_tensor(batch[ACTION])
    actions[0, 0, 0] = 1e3  # a spike
    policy.normalizer["action"].fit(actions)
    policy.normalizer["state"].fit(torch.as_tensor(batch[OBS_STATE]))
    save_policy(policy.eval(), tmp_path / "ckpt")
    loaded = load_policy(tmp_path / "ckpt")
    assert loaded.config.normalization.action == "quantile"
    assert loaded.normalizer["action"].mode == "quantile"
    assert torch.equal(loaded.normalizer["action"].scale, policy.normalizer["action"].scale)
    assert loaded.normalizer["action"].scale.max() < 10  # from the percentiles, not the spike


def test_unknown_normalisation_mode_is_a_named_error():
    with pytest.raises(ConfigError, match="normalization.action.*quantile"):
        preset("cpu", **{"normalization.action": "q99"})
