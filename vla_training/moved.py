"""Old import paths of modules that moved into the layer subpackages (kept for one release).

`import vla_training.train` still works: it warns (DeprecationWarning, naming the new path) and
returns the module at its new place, the same object, so patches through either name act alike.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import warnings

# old module -> new module (moved 2026-12; remove after the next release)
MOVED = {f"vla_training.{name}": f"vla_training.{layer}.{name}" for layer, names in {
    "data": ["dataset_info", "episodes", "import_bag", "import_seed", "messages", "plots", "samples", "sim"],
    "training": ["ema", "feature_cache", "train", "train_state"],
    "evaluation": ["bag_eval", "bench", "evaluate", "report"],
    "demos": ["demo", "lanes", "probe", "ros_demo", "smoke_demo", "vision_demo", "vision_report"],
}.items() for name in names}


class MovedModuleFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds an old module name and hands back the module at its new path."""

    def __init__(self, moved: dict[str, str]) -> None:
        self.moved = moved

    def find_spec(self, fullname, path=None, target=None):
        return importlib.util.spec_from_loader(fullname, self) if fullname in self.moved else None

    def create_module(self, spec):
        new = self.moved[spec.name]
        warnings.warn(f"{spec.name} has moved to {new}; import it from there (the old path goes in the next "
                      "release)", DeprecationWarning, stacklevel=3)
        return importlib.import_module(new)

    def exec_module(self, module) -> None:
        """The module is already executed at its new path."""


def install() -> None:
    if not any(isinstance(finder, MovedModuleFinder) for finder in sys.meta_path):
        sys.meta_path.append(MovedModuleFinder(MOVED))
