"""The tour names real code: every file, function, link and exercise it cites exists.

The conventions of ``docs/tour.md`` that these tests parse:

* loopy's code is cited as a link whose text is the name and whose target is
  the file defining it, ``[`Loop._run_once`](../loopy/loop.py)``, or as a
  name in backticks, ``Loop._ready``, for the classes of :data:`LOOPY_CLASSES`;
  files as ``loopy/...py`` in backticks or as link targets.
* asyncio's code is cited as a link pinned to a CPython tag whose text is a
  name defined in that file:
  ``[`BaseEventLoop._run_once`](https://github.com/python/cpython/blob/v3.11.7/Lib/asyncio/base_events.py)``.
* chapters are ``## N. Title``; each ends with ``### Exercises``, numbered
  ``**N.k ...`` (one to three), and ``Solutions: [...](solutions/FILE.py)``.
"""

from __future__ import annotations

import ast
import functools
import importlib
import re
import sys
import sysconfig
from collections.abc import Iterator
from pathlib import Path

import pytest

import loopy

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
TOUR = DOCS / "tour.md"

#: The loopy classes whose names the tour may cite in backticks, and their modules.
LOOPY_CLASSES = {
    "Loop": "loopy.loop",
    "Watch": "loopy.loop",
    "Handle": "loopy.handles",
    "TimerHandle": "loopy.handles",
    "TimerStore": "loopy.timers",
    "Future": "loopy.futures",
    "Task": "loopy.tasks",
    "SocketMethods": "loopy.sockets",
    "FileTransport": "loopy.transports",
    "SocketTransport": "loopy.transports",
    "FlowControl": "loopy.transports",
    "ReadControl": "loopy.transports",
    "Waker": "loopy.wakeup",
    "Hooks": "loopy.instruments",
    "Instrument": "loopy.instruments",
    "Server": "loopy.servers",
    "ServerMethods": "loopy.servers",
    "ConnectionMethods": "loopy.connections",
    "ThreadMethods": "loopy.threads",
    "SignalMethods": "loopy.signals",
    "SubprocessMethods": "loopy.subprocesses",
    "SubprocessTransport": "loopy.subprocesses",
    "ReadPipeTransport": "loopy.pipes",
    "WritePipeTransport": "loopy.pipes",
    "EventLoopPolicy": "loopy.runners",
    "EpollSelector": "loopy.epoll",
    "Program": "loopy.demo",
    "TraceRecorder": "loopy.trace.recorder",
    "StallDetector": "loopy.trace.stalls",
    "LoadMonitor": "loopy.trace.stalls",
}

# A Markdown link (or image): [text](target).
LINK = re.compile(r"\[([^\]]*)\]\(([^)\s]+)\)")
# A CPython link, pinned to a release tag: the file is under Lib/ or Modules/.
CPYTHON = re.compile(
    r"https://github\.com/python/cpython/blob/v(\d+)\.(\d+)\.(\d+)/((?:Lib|Modules)/[\w/.]+)"
)
# A cited name: `name` or `Class.attribute` (private and dunder names included).
NAME = re.compile(r"`(\w+(?:\.\w+)?)`")


def tour() -> str:
    return TOUR.read_text()


def links() -> list[tuple[str, str]]:
    return LINK.findall(tour())


def without_cpython_links(text: str) -> str:
    """The tour with every CPython link cut out: what is left cites loopy."""
    return LINK.sub(lambda m: "" if "github.com/python/cpython" in m.group(2) else m.group(0), text)


# -- what a Python file defines -------------------------------------------------


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """The statements of a block, and of the if/try/with blocks in it (not of defs)."""
    for node in body:
        yield node
        if isinstance(node, ast.If | ast.With):
            yield from _statements(node.body)
            yield from _statements(getattr(node, "orelse", []))
        elif isinstance(node, ast.Try):
            yield from _statements(node.body)
            yield from _statements(node.orelse)
            yield from _statements(node.finalbody)
            for handler in node.handlers:
                yield from _statements(handler.body)


def _target_names(target: ast.expr) -> Iterator[str]:
    if isinstance(target, ast.Name):
        yield target.id
    elif isinstance(target, ast.Tuple | ast.List):
        for element in target.elts:
            yield from _target_names(element)


def _assigned(node: ast.stmt) -> Iterator[str]:
    """The names a statement defines: a def, a class or an assignment."""
    if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
        yield node.name
    elif isinstance(node, ast.Assign):
        for target in node.targets:
            yield from _target_names(target)
    elif isinstance(node, ast.AnnAssign):
        yield from _target_names(node.target)


@functools.cache
def defined_names(path: Path) -> frozenset[str]:
    """``name`` for each module-level definition of ``path``, ``Class.attr`` for class members.

    A class member is a method, a class attribute or an attribute its
    methods assign on ``self``.
    """
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in _statements(tree.body):
        names.update(_assigned(node))
        if not isinstance(node, ast.ClassDef):
            continue
        for member in _statements(node.body):
            names.update(f"{node.name}.{name}" for name in _assigned(member))
        for inner in ast.walk(node):
            targets: list[ast.expr] = []
            if isinstance(inner, ast.Assign):
                targets = inner.targets
            elif isinstance(inner, ast.AnnAssign | ast.AugAssign):
                targets = [inner.target]
            for target in targets:
                if (
                    isinstance(target, ast.Attribute)
                    and isinstance(target.value, ast.Name)
                    and target.value.id == "self"
                ):
                    names.add(f"{node.name}.{target.attr}")
    return frozenset(names)


def cited_name(text: str) -> str | None:
    """The name a link's text cites (```Class.attr``` or ```name```), None for a file."""
    if "/" in text or text.endswith(".py`"):
        return None
    match = re.fullmatch(r"`(\w+(?:\.\w+)?)`", text)
    assert match, f"link text {text!r} is neither `name`, `Class.attr` nor a file"
    return match.group(1)


# -- loopy --------------------------------------------------------------------


def test_every_file_the_tour_names_exists() -> None:
    text = tour()
    files = set(re.findall(r"`(loopy/[\w/]+\.py)`", text))
    assert files, "the tour names no file"
    assert sorted(f for f in files if not (ROOT / f).exists()) == []
    targets = {target for _, target in links() if not target.startswith(("http", "#"))}
    assert any(target.startswith("../loopy/") for target in targets)
    assert sorted(t for t in targets if not (DOCS / t).exists()) == []


def test_every_loopy_link_names_code_that_file_defines() -> None:
    checked = 0
    missing = []
    for text, target in links():
        if not (target.startswith("../loopy/") and target.endswith(".py")):
            continue
        name = cited_name(text)
        if name is None:
            continue
        checked += 1
        if name not in defined_names((DOCS / target).resolve()):
            missing.append(f"{name} in {target}")
    assert checked > 50
    assert missing == []


def test_every_class_and_method_the_tour_names_exists() -> None:
    """Backticked ``Class.attr`` of loopy's classes exist on the class (or its instances)."""
    text = without_cpython_links(tour())
    names = {name for name in NAME.findall(text) if name.partition(".")[0] in LOOPY_CLASSES}
    assert len(names) > 50
    loop = loopy.Loop()  # for the attributes a loop sets up in __init__
    try:
        missing = []
        for name in sorted(names):
            class_name, _, attribute = name.partition(".")
            module = importlib.import_module(LOOPY_CLASSES[class_name])
            cls = getattr(module, class_name)
            if not attribute:
                continue
            owner = loop if cls is loopy.Loop else cls
            source = Path(module.__file__ or "")
            if not hasattr(owner, attribute) and name not in defined_names(source):
                missing.append(name)
        assert missing == []
    finally:
        loop.close()


def test_every_class_the_tour_cites_in_backticks_is_a_known_loopy_class() -> None:
    """A ``Class.attr`` in backticks outside a CPython link must be loopy's, and checked above.

    Names of asyncio's classes belong in pinned CPython links; this catches
    one written as plain code, which nothing would check.
    """
    text = without_cpython_links(tour())
    unknown = {
        name
        for name in NAME.findall(text)
        if "." in name
        and re.match(r"_?[A-Z]", name)
        and name.partition(".")[0] not in LOOPY_CLASSES
    }
    assert sorted(unknown) == []


# -- asyncio --------------------------------------------------------------------


def cpython_links() -> list[tuple[str, str, re.Match[str]]]:
    """(text, url, match) of every link to CPython's source."""
    found = []
    for text, target in links():
        if "github.com/python/cpython" in target:
            match = CPYTHON.fullmatch(target)
            assert match, f"not pinned to a release tag: {target}"
            found.append((text, target, match))
    return found


def test_every_mention_of_cpython_is_a_pinned_link() -> None:
    text = tour()
    assert text.count("github.com/python/cpython") == len(cpython_links())
    tags = {match.group(1, 2, 3) for _, _, match in cpython_links()}
    assert len(tags) == 1, f"links pinned to several tags: {tags}"
    assert tags.pop()[:2] == ("3", "11")


def test_asyncio_links_name_code_that_exists_in_this_pythons_stdlib() -> None:
    """Each ```name``` linked to ``Lib/...`` is defined in that file of the running stdlib."""
    found = cpython_links()
    version = found[0][2].group(1, 2)
    if version != (str(sys.version_info.major), str(sys.version_info.minor)):
        pytest.skip(f"links are pinned to {'.'.join(version)}; this is {sys.version}")
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    checked = 0
    missing = []
    for text, _, match in found:
        path = match.group(4)
        if not path.startswith("Lib/"):
            assert path == "Modules/_asynciomodule.c", path  # C: only the file is named
            continue
        source = stdlib / path.removeprefix("Lib/")
        assert source.exists(), source
        name = cited_name(text)
        assert name is not None, f"a CPython link must name code: {text!r}"
        checked += 1
        if name not in defined_names(source):
            missing.append(f"{name} in {path}")
    assert checked > 40
    assert missing == []


# -- chapters, anchors, exercises -------------------------------------------------


def github_slug(heading: str) -> str:
    """The anchor a Git host gives a Markdown heading (GitHub's rule, for ASCII text)."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_anchor_points_at_a_heading() -> None:
    text = tour()
    slugs = {github_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.M)}
    anchors = {target[1:] for _, target in links() if target.startswith("#")}
    assert anchors
    assert sorted(anchors - slugs) == []


def chapters() -> list[tuple[int, str, str]]:
    """(number, title, body) of each ``## N. Title`` chapter."""
    parts = re.split(r"^## (\d+)\. (.+)$", tour(), flags=re.M)
    return [(int(parts[i]), parts[i + 1].strip(), parts[i + 2]) for i in range(1, len(parts), 3)]


def test_chapters_are_numbered_in_order() -> None:
    numbers = [number for number, _, _ in chapters()]
    assert numbers == list(range(1, len(numbers) + 1))
    assert len(numbers) >= 16


def test_every_chapter_ends_with_exercises_linking_an_existing_solution() -> None:
    linked = set()
    for number, title, body in chapters():
        sections = re.split(r"^### (.+)$", body, flags=re.M)
        assert len(sections) >= 3, f"chapter {number} has no subsection"
        assert sections[-2].strip() == "Exercises", f"chapter {number} ends with {sections[-2]!r}"
        exercises = sections[-1]
        numbers = re.findall(rf"^\d+\. \*\*{number}\.(\d+) ", exercises, flags=re.M)
        assert numbers == [str(k) for k in range(1, len(numbers) + 1)], (number, numbers)
        assert 1 <= len(numbers) <= 3, f"chapter {number}: {len(numbers)} exercises"
        solutions = re.findall(r"^Solutions: \[.+\]\((solutions/\w+\.py)\)\.$", exercises, re.M)
        assert len(solutions) == 1, f"chapter {number} links {solutions}"
        assert exercises.strip().splitlines()[-1].startswith("Solutions:"), number
        path = DOCS / solutions[0]
        assert path.exists(), path
        linked.add(path.name)
        # The solution says which chapter and which exercises it answers.
        docstring = " ".join((ast.get_docstring(ast.parse(path.read_text())) or "").split())
        plain_title = title.replace("`", "")
        assert f'chapter {number}, "{plain_title}"' in docstring, path
        for k in numbers:
            assert f"Exercise {number}.{k}:" in docstring, (path, k)
    assert linked == {path.name for path in (DOCS / "solutions").glob("*.py")}


def test_the_contents_list_every_chapter_in_order() -> None:
    """The list at the top names each chapter, by its title and the anchor of its heading."""
    text = tour()
    front = text[: text.index("\n## 1. ")]
    listed = re.findall(r"^(\d+)\. \[(.+)\]\(#([\w-]+)\)$", front, flags=re.M)
    expected = [
        (str(number), title, github_slug(f"{number}. {title}")) for number, title, _ in chapters()
    ]
    assert listed == expected


def test_every_edge_names_the_report_it_comes_from() -> None:
    """Each section of an "Edges:" chapter says which issue or question it answers."""
    edges = 0
    for number, title, body in chapters():
        if not title.startswith("Edges:"):
            continue
        sections = re.split(r"^### (.+)$", body, flags=re.M)
        for heading, section in zip(sections[1::2], sections[2::2], strict=True):
            if heading == "Exercises":
                continue
            edges += 1
            assert "Source" in section, (number, heading)
            assert "```python" in section, (number, heading)  # a runnable example
    assert edges >= 8
