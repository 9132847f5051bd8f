"""partial.package: a package imported without its __init__, completed on first use."""

from __future__ import annotations

import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from shipper.kafka import partial

NAME = "shipper_partial_demo"

# A package whose __init__ records that it ran and imports a submodule from itself the way
# kafka-python's do (``from pkg import sub`` while the package is still loading).
INIT = """
from shipper_partial_demo import tools
from shipper_partial_demo.tools import *
RAN = True
FULL = "the whole package"
"""
TOOLS = """
__all__ = ["tool"]
def tool():
    return "tool"
"""
HEAVY = """
import shipper_partial_demo
shipper_partial_demo.heavy_loaded = True
"""


@pytest.fixture(name="demo")
def fixture_demo(tmp_path: Path) -> Iterator[Path]:
    """A package on sys.path (init, a light submodule, a heavy one); forgotten afterwards."""
    pkg = tmp_path / NAME
    pkg.mkdir()
    (pkg / "__init__.py").write_text(INIT)
    (pkg / "tools.py").write_text(TOOLS)
    (pkg / "heavy.py").write_text(HEAVY)
    sys.path.insert(0, str(tmp_path))
    yield pkg
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m == NAME or m.startswith(NAME + ".")]:
        del sys.modules[name]


def test_init_does_not_run(demo: Path) -> None:
    """The package is importable and its submodules load, but its __init__ has not run."""
    module = partial.package(NAME)
    assert sys.modules[NAME] is module
    assert "RAN" not in vars(module)
    from shipper_partial_demo.tools import tool  # noqa: PLC0415 - imported under test

    assert tool() == "tool"
    assert "RAN" not in vars(module)


def test_exports_are_offered_by_the_package(demo: Path) -> None:
    """Names of the exported submodules' __all__ can be imported from the package itself."""
    partial.package(NAME, "tools")
    from shipper_partial_demo import tool  # noqa: PLC0415 - imported under test

    assert tool() == "tool"
    assert "RAN" not in vars(sys.modules[NAME])


def test_first_missing_name_runs_the_init(demo: Path) -> None:
    """A name only the __init__ defines runs it once; later users see the whole package."""
    module = partial.package(NAME)
    from shipper_partial_demo import FULL  # noqa: PLC0415 - imported under test

    assert FULL == "the whole package"
    assert module.RAN is True
    assert "__getattr__" not in vars(module)  # complete: plain attribute lookups again
    with pytest.raises(AttributeError):
        _ = module.nothing_like_this


def test_a_missing_name_is_still_an_attribute_error(demo: Path) -> None:
    """A name the complete package does not have either raises AttributeError."""
    module = partial.package(NAME)
    assert not hasattr(module, "nothing_like_this")
    assert module.RAN is True


def test_submodule_imports_parent_while_bare(demo: Path) -> None:
    """A submodule that imports its own package gets the bare one without completing it."""
    module = partial.package(NAME)
    __import__(f"{NAME}.heavy")
    assert module.heavy_loaded is True
    assert "RAN" not in vars(module)


def test_an_imported_package_is_left_alone(demo: Path) -> None:
    """A package imported normally before is returned as it is."""
    whole = __import__(NAME)
    assert whole.RAN is True
    assert partial.package(NAME) is whole


def test_threads_complete_it_once(demo: Path) -> None:
    """Threads asking for the same missing name at once all get it; the __init__ runs once."""
    module = partial.package(NAME)
    (demo / "__init__.py").write_text(INIT + "\nimport builtins\nbuiltins.demo_runs += 1\n")
    import builtins  # noqa: PLC0415 - a counter the __init__ can reach

    builtins.demo_runs = 0  # type: ignore[attr-defined]  # the test's own counter
    got: list[str] = []
    threads = [threading.Thread(target=lambda: got.append(module.FULL)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    try:
        assert got == ["the whole package"] * 8
        assert builtins.demo_runs == 1  # type: ignore[attr-defined]
    finally:
        del builtins.demo_runs  # type: ignore[attr-defined]


def test_a_missing_package_is_an_import_error(demo: Path) -> None:
    """A name that is no package on the path raises ImportError."""
    with pytest.raises(ImportError):
        partial.package("shipper_partial_no_such_package")
    partial.package(NAME)
    with pytest.raises(ImportError):
        partial.package(f"{NAME}.tools")  # a module, not a package
