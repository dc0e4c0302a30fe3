"""The stage-1 feature cache at scale: the fingerprint read once (rank 0), the prompt template in the key, and a
warning when the run's features cannot fit under the cap."""

import os
import socket

import pytest
import torch
import torch.distributed as dist
from conftest import make_policy
from test_training import _cached_batches

from vla_training.training import feature_cache
from vla_training.training.feature_cache import FeatureCache, backbone_fingerprint, shared_fingerprint


@pytest.fixture(scope="module")
def tiny():
    return make_policy("tiny", "regression")


def test_the_prompt_template_is_part_of_the_key(tiny, monkeypatch):
    from vla_models.backbones import qwen_vl

    before = backbone_fingerprint(tiny)
    monkeypatch.setattr(qwen_vl, "VISION_PROMPT", "<|vision_start|><|image_pad|><|vision_end|> camera")
    assert backbone_fingerprint(tiny) != before  # features of another prompt are never served


def _rank(rank: int, port: int, log: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        def counted(policy):
            with open(log, "a") as fh:
                fh.write(f"{rank}\n")
            return f"fingerprint of rank {rank}"

        feature_cache.backbone_fingerprint = counted  # this process's module (forked): the stand-in counts reads
        with open(f"{log}.{rank}", "w") as fh:
            fh.write(shared_fingerprint(None, True, rank))
    finally:
        dist.destroy_process_group()


def test_only_rank_0_reads_the_weights_for_the_fingerprint(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    log = str(tmp_path / "reads")
    torch.multiprocessing.start_processes(_rank, args=(port, log), nprocs=2, start_method="fork")
    assert open(log).read().split() == ["0"]  # one read of the weights, by rank 0
    assert [open(f"{log}.{r}").read() for r in (0, 1)] == ["fingerprint of rank 0"] * 2  # every rank uses it


def test_a_cap_too_small_for_the_runs_features_is_a_warning(tmp_path, capsys):
    policy = make_policy("tiny", "regression", fusion="cross_attention")
    batch = _cached_batches(policy, tmp_path / "data", batches=1, size=2)[0]
    FeatureCache(tmp_path / "big", policy, max_bytes=2**30, expected_entries=1000).features(batch)
    assert "warning: feature cache" not in capsys.readouterr().out
    FeatureCache(tmp_path / "small", policy, max_bytes=2**20, expected_entries=1000).features(batch)
    out = capsys.readouterr().out
    assert "warning: feature cache: 1000 samples" in out and "raise --feature-cache-gb" in out
