"""Action experts. Adding one = one file with an `ActionExpert` subclass + one registry entry."""

from .base import ActionExpert, Sampling
from .diffusion import DiffusionExpert
from .flow import FlowExpert
from .regression import RegressionExpert

EXPERTS: dict[str, type[ActionExpert]] = {"regression": RegressionExpert, "diffusion": DiffusionExpert,
                                          "flow": FlowExpert}

__all__ = ["ActionExpert", "DiffusionExpert", "EXPERTS", "FlowExpert", "RegressionExpert", "Sampling"]
