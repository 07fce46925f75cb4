"""The tour names real code: every ``loopy/...`` file and ``Class.method`` it cites exists."""

from __future__ import annotations

import importlib
import re
from pathlib import Path

import loopy

ROOT = Path(__file__).resolve().parent.parent
TOUR = ROOT / "docs" / "tour.md"

# Names the tour cites as loopy's: `Class.method` or `Class` in backticks.
# (asyncio's private ``Task.__step`` style names are asyncio's, not checked.)
CITED = re.compile(
    r"`((?:Loop|Handle|TimerHandle|Future|Task|SocketMethods|SocketTransport|Waker|FlowControl"
    r"|Hooks)(?:\.(?!__)\w+)?)`"
)


def test_every_file_the_tour_names_exists() -> None:
    files = set(re.findall(r"`(loopy/[\w/]+\.py)`", TOUR.read_text()))
    assert files, "the tour names no file"
    assert sorted(f for f in files if not (ROOT / f).exists()) == []


def test_every_class_and_method_the_tour_names_exists() -> None:
    modules = {
        "Loop": "loopy.loop",
        "Handle": "loopy.handles",
        "TimerHandle": "loopy.handles",
        "Future": "loopy.futures",
        "Task": "loopy.tasks",
        "SocketMethods": "loopy.sockets",
        "SocketTransport": "loopy.transports",
        "FlowControl": "loopy.transports",
        "Waker": "loopy.wakeup",
        "Hooks": "loopy.instruments",
    }
    names = set(CITED.findall(TOUR.read_text()))
    assert len(names) > 10
    loop = loopy.Loop()  # for the attributes a loop sets up in __init__
    try:
        missing = []
        for name in sorted(names):
            class_name, _, attribute = name.partition(".")
            cls = getattr(importlib.import_module(modules[class_name]), class_name)
            owner = loop if cls is loopy.Loop else cls
            if attribute and not hasattr(owner, attribute):
                missing.append(name)
        assert missing == []
    finally:
        loop.close()
