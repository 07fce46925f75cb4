"""Build loopy's API reference from its docstrings, with pdoc.

    uv run python docs/api.py -o docs/api    # write static HTML; open docs/api/index.html
    uv run python docs/api.py                # or serve it at http://localhost:8080

Any other pdoc option works too (``--help`` lists them).  This is ``pdoc`` run
on every module of the package: plain ``pdoc loopy`` would document only the
names in ``loopy.__all__``, because pdoc takes a package's ``__all__`` as the
list of its submodules to document.  ``tests/test_api_reference.py`` builds
it, so CI fails if the build breaks or warns.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys
import types
from pathlib import Path
from typing import Protocol

# Run from a checkout without installing: document the loopy beside this file.
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import pdoc.__main__

import loopy


def module_names() -> list[str]:
    """Every module of the package, less ``loopy.__main__`` (importing it runs the CLI).

    A module that a package's ``__all__`` names is left out: pdoc adds it
    when it walks that package, and would warn that it was given twice.
    """
    names = ["loopy"] + [
        info.name
        for info in pkgutil.walk_packages(loopy.__path__, "loopy.")
        if info.name != "loopy.__main__"
    ]
    walked: set[str] = set()
    for name in names:
        module = importlib.import_module(name)
        if hasattr(module, "__path__"):
            walked.update(f"{name}.{child}" for child in getattr(module, "__all__", ()))
    return [name for name in names if name not in walked]


def _help_pdoc_resolve_annotations() -> None:
    """Give pdoc what it needs to resolve every annotation, so it has nothing to warn about.

    * ``loop.py`` imports ``FileDescriptorLike`` from ``_typeshed`` for the
      type checker only; that module exists only in type stubs.  pdoc runs
      ``if TYPE_CHECKING:`` blocks to resolve such names, so give it one.
    * A ``NamedTuple``'s generated ``__new__`` belongs to no module, so pdoc
      cannot resolve its string annotations (``from __future__ import
      annotations``); point it at the class's module.
    """
    if "_typeshed" not in sys.modules:

        class HasFileno(Protocol):
            def fileno(self) -> int: ...

        HasFileno.__module__, HasFileno.__qualname__ = "_typeshed", "HasFileno"
        stub = types.ModuleType("_typeshed")
        stub.HasFileno = HasFileno  # type: ignore[attr-defined]
        stub.FileDescriptorLike = int | HasFileno  # type: ignore[attr-defined]
        sys.modules["_typeshed"] = stub
    for name in module_names():
        for value in vars(importlib.import_module(name)).values():
            named_tuple = isinstance(value, type) and issubclass(value, tuple)
            if named_tuple and hasattr(value, "_fields") and value.__module__.startswith("loopy"):
                value.__new__.__module__ = value.__module__


if __name__ == "__main__":
    _help_pdoc_resolve_annotations()
    pdoc.__main__.cli([*module_names(), *sys.argv[1:]])
