"""Every public module, class, function and method of the package has a docstring.

Public: a name without a leading underscore, in a public module, at module
level or in a public class.  The API reference (``docs/api.py``) is built
from these docstrings, so a missing one is a hole in it.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "loopy"

Definition = ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef


def _is_type_checking(node: ast.If) -> bool:
    """``if TYPE_CHECKING:``: declarations for the type checker, not definitions."""
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _definitions(body: list[ast.stmt]) -> Iterator[Definition]:
    """The classes and functions defined at this level, also inside ``if``/``try`` blocks."""
    for node in body:
        if isinstance(node, Definition):
            yield node
        elif isinstance(node, ast.If) and not _is_type_checking(node):
            yield from _definitions(node.body)
            yield from _definitions(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, node.orelse, node.finalbody, *(h.body for h in node.handlers)):
                yield from _definitions(block)


def undocumented(source: str, module: str) -> list[str]:
    """The public names in ``source`` that have no docstring, as ``module:line name``."""
    tree = ast.parse(source)
    missing = [] if ast.get_docstring(tree) else [f"{module}:1 (module)"]

    def walk(body: list[ast.stmt], prefix: str) -> None:
        for node in _definitions(body):
            if node.name.startswith("_"):
                continue
            if ast.get_docstring(node) is None:
                missing.append(f"{module}:{node.lineno} {prefix}{node.name}")
            if isinstance(node, ast.ClassDef):
                walk(node.body, f"{prefix}{node.name}.")  # methods; not nested functions

    walk(tree.body, "")
    return missing


def public_modules() -> list[Path]:
    files = sorted(PACKAGE.rglob("*.py"))
    return [
        path
        for path in files
        if not any(
            part.startswith("_") and part != "__init__.py"
            for part in path.relative_to(PACKAGE.parent).parts
        )
    ]


def test_every_public_name_has_a_docstring() -> None:
    modules = public_modules()
    assert len(modules) > 20, "the walk found too few modules"
    missing = [
        name
        for path in modules
        for name in undocumented(path.read_text(), str(path.relative_to(PACKAGE.parent)))
    ]
    assert missing == [], "public names without a docstring:\n" + "\n".join(missing)


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ('"""m"""\ndef f(): pass\n', ["m.py:2 f"]),
        ('"""m"""\nclass C:\n    """c"""\n    def g(self): pass\n', ["m.py:4 C.g"]),
        (
            '"""m"""\nclass C:\n    """c"""\n    @property\n    def p(self): return 1\n',
            ["m.py:5 C.p"],
        ),
        ('"""m"""\nasync def f():\n    pass\n', ["m.py:2 f"]),
        ('"""m"""\nif True:\n    def f(): pass\n', ["m.py:3 f"]),
        ("def _f(): pass\n", ["m.py:1 (module)"]),
        ('"""m"""\nclass _C:\n    def g(self): pass\n', []),
        ('"""m"""\ndef f():\n    """f"""\n    def inner(): pass\n', []),
        ('"""m"""\nif TYPE_CHECKING:\n    def f(): ...\n', []),
    ],
)
def test_the_walk_finds_what_it_should(source: str, expected: list[str]) -> None:
    assert undocumented(source, "m.py") == expected
