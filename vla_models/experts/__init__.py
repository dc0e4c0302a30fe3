"""Action experts. Adding one = one file with an `ActionExpert` subclass + one registry entry."""

from .base import ActionExpert
from .diffusion import DiffusionExpert
from .regression import RegressionExpert

EXPERTS: dict[str, type[ActionExpert]] = {"regression": RegressionExpert, "diffusion": DiffusionExpert}

__all__ = ["ActionExpert", "DiffusionExpert", "RegressionExpert", "EXPERTS"]
