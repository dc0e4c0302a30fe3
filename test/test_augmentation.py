"""Image augmentation: training batches only, per view, with named errors (training/augmentation.py)."""

import numpy as np
import pytest

from vla_models import ConfigError
from vla_models.constants import OBS_IMAGES
from vla_training.cli import main as vla
from vla_training.data.episodes import EpisodeData, write_episode
from vla_training.training.augmentation import AugmentedCollate, ViewAugmentation, parse_augment


def _image(h=24, w=32):
    return np.random.default_rng(0).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_random_shift_is_a_window_of_the_edge_padded_frame():
    image, aug = _image(), ViewAugmentation(shift=4)
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)), mode="edge")
    rng = np.random.default_rng(1)
    windows = set()
    for _ in range(40):
        out = aug(image, rng)
        assert out.shape == image.shape and out.dtype == np.uint8
        match = [(y, x) for y in range(9) for x in range(9) if np.array_equal(padded[y:y + 24, x:x + 32], out)]
        assert match, "the output is not a shifted window of the frame"
        windows.add(match[0])
    assert len(windows) > 10  # the shift varies


@pytest.mark.parametrize("options", [{"crop": 0.7}, {"brightness": 0.3}, {"contrast": 0.3},
                                     {"shift": 2, "crop": 0.8, "brightness": 0.2, "contrast": 0.2}])
def test_each_option_changes_the_frame_and_keeps_its_shape(options):
    image = _image()
    out = ViewAugmentation(**options)(image, np.random.default_rng(3))
    assert out.shape == image.shape and out.dtype == np.uint8
    assert not np.array_equal(out, image)
    assert np.array_equal(ViewAugmentation()(image, np.random.default_rng(3)), image)  # no options: unchanged


def test_views_are_configured_each_or_by_star():
    augs = parse_augment({"*": {"shift": 4}, "wrist": {"brightness": 0.1}}, ["front", "wrist", "side"])
    assert augs == {"front": ViewAugmentation(shift=4), "side": ViewAugmentation(shift=4),
                    "wrist": ViewAugmentation(brightness=0.1)}
    assert parse_augment({"wrist": {"shift": 2}}, ["front", "wrist"]) == {"wrist": ViewAugmentation(shift=2)}


@pytest.mark.parametrize("spec, views, message", [
    ({"top": {"shift": 4}}, ["front"], r"unknown view\(s\) \['top'\]; expected some of \['front'\]"),
    ({"front": {"rotate": 10}}, ["front"], "augment.front: expected a mapping with some of"),
    ({"front": {"shift": -1}}, ["front"], "augment.front.shift: expected pixels"),
    ({"front": {"crop": 0}}, ["front"], r"augment.front.crop: expected a fraction of the area in \(0, 1\]"),
    ({"front": {"brightness": 1.5}}, ["front"], r"augment.front.brightness: expected a factor in \[0, 1\)"),
    ({"*": {"shift": 4}}, [], "no camera views"),
])
def test_bad_augmentation_config_is_a_named_error(spec, views, message):
    with pytest.raises(ConfigError, match=message):
        parse_augment(spec, views)


def test_collate_augments_only_the_views_configured():
    frames = {"front": _image(), "wrist": _image()}
    samples = [{OBS_IMAGES: dict(frames)} for _ in range(3)]
    batch = AugmentedCollate(lambda s: s, {"wrist": ViewAugmentation(shift=4)})(samples)
    assert all(np.array_equal(s[OBS_IMAGES]["front"], frames["front"]) for s in batch)
    assert any(not np.array_equal(s[OBS_IMAGES]["wrist"], frames["wrist"]) for s in batch)


def _image_dataset(root, episodes=3, steps=12):
    rng = np.random.default_rng(0)
    t = np.arange(steps) * 0.1
    for e in range(episodes):
        write_episode(root, f"episode_{e:06d}", EpisodeData(
            instruction="insert", actions=rng.normal(size=(steps, 2)), actions_t=t, action_names=["dx", "dy"],
            state=rng.normal(size=(steps, 3)), state_t=t, state_names=["a", "b", "c"],
            images={"front": rng.integers(0, 256, (steps, 56, 56, 3), dtype=np.uint8)}, images_t={"front": t}))
    return str(root)


TINY_IMAGES = ["--config", "tiny", "-o", "views=[front]", "-o", "sensor.channels=0", "-o", "state.dim=3",
               "-o", "action_dim=2", "-o", "action_names=[dx,dy]", "-o", "horizon=2", "--expert", "regression",
               "--device", "cpu", "--no-progress"]


def test_trainer_augments_training_batches_and_never_validation_batches(tmp_path, monkeypatch):
    """The training loader's frames are augmented; validation (and so best/) sees the frames as recorded."""
    from vla_training.data.episodes import list_episodes
    from vla_training.training import train as train_module

    data = _image_dataset(tmp_path / "data")
    recorded = [ep.frame("front", k) for ep in list_episodes(data) for k in range(ep.frame_count("front"))]
    seen, validating = {"train": [], "val": []}, [False]

    class Spy(train_module.BackboneCollate):
        def __call__(self, samples):
            seen["val" if validating[0] else "train"].extend(np.array(s[OBS_IMAGES]["front"]) for s in samples)
            return super().__call__(samples)

    validate = train_module.Trainer.validate

    def spied_validate(self):
        validating[0] = True
        try:
            return validate(self)
        finally:
            validating[0] = False

    monkeypatch.setattr(train_module, "BackboneCollate", Spy)
    monkeypatch.setattr(train_module.Trainer, "validate", spied_validate)
    assert vla(["train", *TINY_IMAGES, "--dataset", data, "--batch-size", "4", "--max-steps", "3", "--checkpoint-every",
                "3", "--val-fraction", "0.34", "-o", "train.augment={front: {shift: 6, brightness: 0.3}}",
                "--out", str(tmp_path / "run")]) == 0

    def as_recorded(frame):
        return any(np.array_equal(frame, r) for r in recorded)

    assert len(seen["train"]) == 12 and len(seen["val"]) > 0
    assert not any(as_recorded(f) for f in seen["train"]), "a training frame was not augmented"
    assert all(as_recorded(f) for f in seen["val"]), "a validation frame was augmented"


def test_augmentation_with_cached_features_is_a_named_error(tmp_path, capsys):
    data = _image_dataset(tmp_path / "data")
    code = vla(["train", *TINY_IMAGES, "--dataset", data, "--max-steps", "1",
                "--feature-cache", str(tmp_path / "cache"), "-o", "train.augment={front: {shift: 4}}",
                "--out", str(tmp_path / "run")])
    assert code == 2 and "cannot show augmented ones" in capsys.readouterr().err
