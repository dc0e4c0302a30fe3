"""Action experts. Adding one = one file with an `ActionExpert` subclass + one entry in EXPERTS below and its
name in `vla_models.config.EXPERT_TYPES` (which the config validates `expert.type` against)."""

from ..config import EXPERT_TYPES
from .base import ActionExpert, Sampling
from .diffusion import DiffusionExpert
from .flow import FlowExpert
from .regression import RegressionExpert

EXPERTS: dict[str, type[ActionExpert]] = {"regression": RegressionExpert, "diffusion": DiffusionExpert,
                                          "flow": FlowExpert}

if tuple(EXPERTS) != EXPERT_TYPES:
    raise ImportError(f"vla_models.experts.EXPERTS names {tuple(EXPERTS)} but vla_models.config.EXPERT_TYPES is "
                      f"{EXPERT_TYPES}: name every expert in both (same order)")

__all__ = ["ActionExpert", "DiffusionExpert", "EXPERTS", "FlowExpert", "RegressionExpert", "Sampling"]
