"""Import the modules we use from a package without running the package's ``__init__``, which
for kafka-python and crc32c imports everything they offer (a producer, a consumer, an admin
client, a command line) and costs a sidecar several MiB of memory it never uses.

``package(name)`` puts the package into ``sys.modules`` as Python's import system would, with
its ``__path__`` (so its submodules import as usual), but without executing its
``__init__.py``. The first access to a name the package does not have yet (``from kafka
import KafkaConsumer`` anywhere in the process, later) runs the ``__init__`` then, so any other
user of the package still gets all of it, only later. A package already imported is left as
it is.
"""

from __future__ import annotations

import importlib
import sys
import threading
from importlib.machinery import PathFinder
from importlib.util import module_from_spec
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from importlib.abc import Loader
    from types import ModuleType

__all__ = ["package"]


def package(name: str, *exports: str) -> ModuleType:
    """The package ``name``, imported without its ``__init__`` if it is not imported yet.

    ``exports``: submodules to import now whose ``__all__`` names the package offers
    directly, as its ``__init__``'s ``from .sub import *`` would (for other modules that
    import those names from the package). The parent packages of a dotted ``name`` must be
    imported already (with ``package`` or not).
    """
    module = sys.modules.get(name)
    if module is not None:
        return module
    parent, _, last = name.rpartition(".")
    path = sys.modules[parent].__path__ if parent else None
    spec = PathFinder.find_spec(name, path)
    if spec is None or spec.loader is None or spec.submodule_search_locations is None:
        raise ImportError(f"no package named {name!r}", name=name)
    module = module_from_spec(spec)
    module.__dict__["__getattr__"] = _completion(module, spec.loader)
    sys.modules[name] = module
    if parent:
        setattr(sys.modules[parent], last, module)
    for sub in exports:
        found = importlib.import_module(f"{name}.{sub}")
        for attr in found.__all__:
            setattr(module, attr, getattr(found, attr))
    return module


def _completion(module: ModuleType, loader: Loader) -> object:
    """A module ``__getattr__`` (PEP 562) that runs ``module``'s ``__init__`` on the first
    name it lacks, once, and then looks the name up again.

    While the ``__init__`` runs, a missing name is an AttributeError: the import system then
    imports it as a submodule (``from kafka import errors`` inside kafka-python).
    """
    lock = threading.RLock()
    state = ["bare"]  # bare -> running -> complete

    def __getattr__(attr: str) -> object:  # noqa: N807 - the name PEP 562 looks for
        with lock:  # another thread waits here until the __init__ has run
            if state[0] == "bare":
                state[0] = "running"
                try:
                    loader.exec_module(module)
                finally:
                    state[0] = "complete"
                    module.__dict__.pop("__getattr__", None)
        try:
            return module.__dict__[attr]
        except KeyError:
            raise AttributeError(f"module {module.__name__!r} has no attribute {attr!r}") from None

    return __getattr__
