import os

import pytest
import torch

os.environ.setdefault("ROS_AUTOMATIC_DISCOVERY_RANGE", "LOCALHOST")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs 2 pytest processes on 2 cores: one math thread each (and in the processes they start),
    # else 4 spinning OpenMP threads share 2 cores and a 12 s test takes 80 s
    os.environ.setdefault("OMP_NUM_THREADS", "1")

if os.environ.get("PYTEST_XDIST_WORKER"):
    torch.set_num_threads(1)

from vla_models import build_policy, preset  # noqa: E402
from vla_models.testing import fit_fake_statistics  # noqa: E402

EXPERTS = ["regression", "diffusion", "flow"]
FUSIONS = ["concat", "cross_attention", "gated", "none"]
BACKBONES = ["tiny", "cpu"]  # `tiny` = Qwen2.5-VL architecture at toy size; `cpu` = backbone none


def make_policy(backbone: str = "cpu", expert: str = "regression", fusion: str = "concat", seed: int = 0, **overrides):
    """A small policy with fitted (random) normaliser statistics, in eval mode."""
    torch.manual_seed(seed)
    config = preset(backbone, **{"expert.type": expert, "fusion.mode": fusion, **overrides})
    policy = build_policy(config)
    fit_fake_statistics(policy)
    return policy.eval()


@pytest.fixture
def policy_factory():
    return make_policy


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Saved `tiny` policies of both experts (the ROS node tests load them as a robot would)."""
    root = tmp_path_factory.mktemp("ckpts")
    return {kind: str(make_policy("tiny", kind).save(root / kind)) for kind in EXPERTS}


@pytest.fixture
def ros():
    """A private rclpy context (own domain id) with a background executor, closed after the test."""
    from ros_helpers import RosHarness

    harness = RosHarness()
    yield harness
    harness.close()
