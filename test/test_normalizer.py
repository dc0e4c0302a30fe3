import torch

from vla_models.normalizer import FeatureNormalizer


def test_round_trip_and_constant_dimension():
    data = torch.randn(200, 4) * torch.tensor([1.0, 10.0, 0.1, 0.0]) + torch.tensor([0.0, 5.0, -2.0, 1.0])
    for mode in ("min_max", "mean_std"):
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
