"""Loads a script of benchmarks/ as a module, for the tests of the helpers it holds."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType


def load(name: str) -> ModuleType:
    """Returns benchmarks/<name>.py imported as the module `<name>_bench`."""
    folder = Path(__file__).parents[1] / "benchmarks"
    if str(folder) not in sys.path:  # a script imports its siblings, as when run from there
        sys.path.append(str(folder))
    path = folder / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"{name}_bench", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while being built
    spec.loader.exec_module(module)
    return module
