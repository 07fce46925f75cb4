"""Frameworks on loopy, started the way their users start them.

Each server here is a real process started as a user would start it (the
``uvicorn`` command, ``python script.py``), on 127.0.0.1 and a free port, and
talked to with real clients (httpx, a websocket client).  The apps it serves
(``tests/apps/``) report which loop, which task class and which process
answered, so each test proves that loopy, in the task mode it asked for, did
the work.  The task mode of a server is picked the way a user picks it, with
``LOOPY_TASKS`` in its environment.

The test runners (pytest-asyncio's ``pytest_asyncio_loop_factories`` hook,
anyio's ``anyio_backend`` fixture) run in a child pytest, from a conftest as a
user would write it; the child's tests check the loop they run on.

One case is the trap the README warns about: ``loopy.install()`` and then
``uvicorn.run(app)`` does not run on loopy, because uvicorn builds its own loop
from its ``loop`` option and never asks asyncio's policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import httpx
import pytest
from websockets.sync.client import connect as ws_connect

import loopy

APPS = Path(__file__).parent / "apps"

#: The ``uvicorn`` command of the Python running these tests.
UVICORN = str(Path(sys.executable).parent / "uvicorn")

#: Upper bound for a server to start, to answer and to stop (seconds).
TIMEOUT = 20.0

#: Both task modes, picked as a user picks them: ``LOOPY_TASKS`` in the environment.
TASK_MODES = ["asyncio", "loopy"]


def class_name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


LOOPY_LOOP = class_name(loopy.Loop)

#: The task class a request handler runs in, for each task mode.
TASK_CLASS = {"asyncio": class_name(asyncio.Task), "loopy": class_name(loopy.Task)}


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class Server:
    """A server process started by a test, and where it listens."""

    process: subprocess.Popen[bytes]
    url: str
    log: Path

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def _wait_until_listening(server: Server, port: int) -> None:
    """Return once ``port`` accepts connections; fail if the server exits first."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        if server.process.poll() is not None:
            pytest.fail(f"the server exited ({server.process.returncode}):\n{server.output()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1.0).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                pytest.fail(f"the server did not listen within {TIMEOUT} s:\n{server.output()}")
            time.sleep(0.05)


@contextlib.contextmanager
def serving(argv: list[str], port: int, tmp_path: Path, **env: str) -> Iterator[Server]:
    """Run ``argv`` (a server on ``port``) from ``tests/apps``; stop it with Ctrl-C.

    The server must then exit 0 within TIMEOUT: a clean shutdown is part of
    what each test checks.  Its output goes to a file, shown when it fails.
    """
    log = tmp_path / "server.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=APPS,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **env},
        )
    server = Server(process, f"http://127.0.0.1:{port}", log)
    try:
        _wait_until_listening(server, port)
        yield server
        process.send_signal(signal.SIGINT)
        try:
            returncode = process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            pytest.fail(f"the server did not stop on SIGINT:\n{server.output()}")
        assert returncode == 0, server.output()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def get_json(url: str) -> Any:
    """GET ``url`` on a connection of its own and return the decoded JSON body."""
    response = httpx.get(url, timeout=TIMEOUT)
    assert response.status_code == 200, response.text
    return response.json()


def check_starlette_app(server: Server, tasks: str) -> int:
    """The JSON route, the websocket and the streaming response, each on loopy.

    Returns the process id that answered.
    """
    info = get_json(f"{server.url}/loop")
    assert info["loop"] == LOOPY_LOOP, info
    assert info["task"] == TASK_CLASS[tasks], info

    ws_url = server.url.replace("http://", "ws://") + "/ws"
    with ws_connect(ws_url, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
        assert json.loads(ws.recv(timeout=TIMEOUT))["loop"] == LOOPY_LOOP
        for text in ("hello", "é" * 1000, ""):
            ws.send(text)
            assert ws.recv(timeout=TIMEOUT) == text

    with httpx.stream("GET", f"{server.url}/stream", timeout=TIMEOUT) as response:
        assert response.headers["transfer-encoding"] == "chunked"
        lines = list(response.iter_lines())
    assert lines == [f"piece {i}" for i in range(5)]
    pid: int = info["pid"]
    return pid


# ----------------------------------------------------------------------
# uvicorn
# ----------------------------------------------------------------------


@pytest.mark.parametrize("tasks", TASK_MODES)
def test_uvicorn_command_with_loop_option(tasks: str, tmp_path: Path) -> None:
    port = free_port()
    argv = [UVICORN, "--loop", "loopy:new_event_loop", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "starlette_app:app"]
    with serving(argv, port, tmp_path, LOOPY_TASKS=tasks) as server:
        pid = check_starlette_app(server, tasks)
        assert pid == server.process.pid  # one process: the command itself serves
    assert "Finished server process" in server.output()


@pytest.mark.parametrize("tasks", TASK_MODES)
def test_uvicorn_run_with_loop_option(tasks: str, tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "serve_uvicorn.py", "loop-option", str(port)]
    with serving(argv, port, tmp_path, LOOPY_TASKS=tasks) as server:
        assert check_starlette_app(server, tasks) == server.process.pid


@pytest.mark.parametrize("tasks", TASK_MODES)
def test_uvicorn_two_workers_each_run_loopy(tasks: str, tmp_path: Path) -> None:
    """Both worker processes behind the one port answer, each from a loopy loop.

    One request holds its worker (``/hold`` blocks that worker's loop until
    the FIFO is closed), so the next connection can only be accepted by the
    other worker: no reliance on how the kernel spreads connections.
    """
    fifo = tmp_path / "hold.fifo"
    os.mkfifo(fifo)
    port = free_port()
    argv = [UVICORN, "--loop", "loopy:new_event_loop", "--workers", "2", "--host", "127.0.0.1"]
    argv += ["--port", str(port), "starlette_app:app"]
    with (
        serving(argv, port, tmp_path, LOOPY_TASKS=tasks, HOLD_FIFO=str(fifo)) as server,
        httpx.Client(timeout=TIMEOUT) as holder,
    ):
        # The held request runs in a thread of its own: its answer comes last.
        held: dict[str, Any] = {}

        def hold() -> None:
            try:
                held.update(holder.get(f"{server.url}/hold").json())
            except Exception as exc:  # reported by the assertions below
                held["error"] = repr(exc)

        thread = threading.Thread(target=hold)
        thread.start()
        try:
            writer = _open_fifo_writer(fifo, server)  # returns once a worker is stuck reading
            try:
                other = check_starlette_app(server, tasks)  # must be the other worker
            finally:
                os.close(writer)  # lets the held worker answer
        finally:
            thread.join(TIMEOUT)
        assert not thread.is_alive()
        assert held.get("loop") == LOOPY_LOOP, held
        assert held["task"] == TASK_CLASS[tasks], held
        supervisor = server.process.pid
        assert len({held["pid"], other, supervisor}) == 3, (held, other, supervisor)


def _open_fifo_writer(fifo: Path, server: Server) -> int:
    """Open ``fifo`` for writing once a reader has it open (a worker inside /hold)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError:  # ENXIO: no reader yet
            if time.monotonic() > deadline or server.process.poll() is not None:
                pytest.fail(f"no worker reached /hold:\n{server.output()}")
            time.sleep(0.05)


def test_loopy_install_then_uvicorn_run_does_not_use_loopy(tmp_path: Path) -> None:
    """The trap: uvicorn makes its own loop from ``loop="auto"``, so install() changes nothing."""
    port = free_port()
    argv = [sys.executable, "serve_uvicorn.py", "install", str(port)]
    with serving(argv, port, tmp_path) as server:
        info = get_json(f"{server.url}/loop")
    assert info["loop"] != LOOPY_LOOP, info
    assert info["loop"] in {"uvloop.Loop", class_name(asyncio.SelectorEventLoop)}, info


@pytest.mark.parametrize("tasks", TASK_MODES)
def test_loopy_install_then_uvicorn_run_with_loop_none_uses_loopy(
    tasks: str, tmp_path: Path
) -> None:
    """``loop="none"`` leaves the loop to asyncio's policy, which install() set."""
    port = free_port()
    argv = [sys.executable, "serve_uvicorn.py", "install-loop-none", str(port)]
    with serving(argv, port, tmp_path, LOOPY_TASKS=tasks) as server:
        info = get_json(f"{server.url}/loop")
    assert info["loop"] == LOOPY_LOOP, info
    assert info["task"] == TASK_CLASS[tasks], info


# ----------------------------------------------------------------------
# aiohttp
# ----------------------------------------------------------------------


#: The task class aiohttp's request handlers run in.  From Python 3.12 on,
#: aiohttp (3.14, ``web_protocol.py``) builds each connection's task itself,
#: ``asyncio.Task(coro, loop=loop, eager_start=True)``, not through
#: ``loop.create_task``: it is asyncio's Task whatever loopy's task mode.
AIOHTTP_TASK = (
    dict.fromkeys(TASK_MODES, class_name(asyncio.Task))
    if sys.version_info >= (3, 12)  # aiohttp's own version check
    else TASK_CLASS
)


@pytest.mark.parametrize("tasks", TASK_MODES)
def test_aiohttp_run_app_after_install(tasks: str, tmp_path: Path) -> None:
    port = free_port()
    argv = [sys.executable, "aiohttp_app.py", str(port)]
    with serving(argv, port, tmp_path, LOOPY_TASKS=tasks) as server:
        info = get_json(f"{server.url}/loop")
        assert info == {"loop": LOOPY_LOOP, "task": AIOHTTP_TASK[tasks], "pid": server.process.pid}
        ws_url = server.url.replace("http://", "ws://") + "/ws"
        with ws_connect(ws_url, open_timeout=TIMEOUT, close_timeout=TIMEOUT) as ws:
            assert json.loads(ws.recv(timeout=TIMEOUT))["loop"] == LOOPY_LOOP
            ws.send("hello")
            assert ws.recv(timeout=TIMEOUT) == "hello"


# ----------------------------------------------------------------------
# Test runners: pytest-asyncio and anyio's pytest plugin, in a child pytest
# ----------------------------------------------------------------------


def run_child_pytest(tmp_path: Path, files: dict[str, str]) -> str:
    """Write ``files`` into ``tmp_path``, run pytest there, return its output.

    The child must pass; its own tests check the loop they ran on.
    """
    for name, text in files.items():
        (tmp_path / name).write_text(textwrap.dedent(text))
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-v", "-p", "no:cacheprovider", "-p", "no:randomly"],
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=2 * TIMEOUT,
        check=False,
    )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    return output


#: What each child test checks: it runs on loopy, in the task mode its factory
#: asked for (``loopy.new_event_loop`` alone follows ``LOOPY_TASKS``, as always).
CHILD_CHECK = """
import asyncio
import os

import loopy


def check_loop(request):
    assert isinstance(asyncio.get_running_loop(), loopy.Loop)
    if request.node.callspec.id.endswith("own-tasks"):
        tasks = "loopy"
    else:
        tasks = os.environ.get("LOOPY_TASKS") or "asyncio"
    expected = loopy.Task if tasks == "loopy" else asyncio.Task
    assert type(asyncio.current_task()) is expected
"""


def test_pytest_asyncio_loop_factories_hook(tmp_path: Path) -> None:
    output = run_child_pytest(
        tmp_path,
        {
            "pytest.ini": """
                [pytest]
                asyncio_default_fixture_loop_scope = function
                filterwarnings = error
            """,
            "conftest.py": """
                import functools

                import loopy


                def pytest_asyncio_loop_factories(config, item):
                    return {
                        "loopy": loopy.new_event_loop,
                        "loopy-own-tasks": functools.partial(loopy.new_event_loop, tasks="loopy"),
                    }
            """,
            "checks.py": CHILD_CHECK,
            "test_on_loopy.py": """
                import asyncio

                import pytest
                import pytest_asyncio

                from checks import check_loop


                @pytest_asyncio.fixture
                async def fixture_loop():
                    yield asyncio.get_running_loop()


                @pytest.mark.asyncio
                async def test_runs_on_loopy(request, fixture_loop):
                    check_loop(request)
                    assert fixture_loop is asyncio.get_running_loop()
                    await asyncio.sleep(0.01)
            """,
        },
    )
    assert "test_runs_on_loopy[loopy] PASSED" in output
    assert "test_runs_on_loopy[loopy-own-tasks] PASSED" in output
    assert " 2 passed" in output


def test_anyio_pytest_plugin_with_anyio_backend_fixture(tmp_path: Path) -> None:
    output = run_child_pytest(
        tmp_path,
        {
            "pytest.ini": """
                [pytest]
                # pytest-asyncio is installed here too; an anyio user does without it.
                addopts = -p no:asyncio
                filterwarnings = error
            """,
            "conftest.py": """
                import functools

                import loopy
                import pytest


                own_tasks = functools.partial(loopy.new_event_loop, tasks="loopy")


                @pytest.fixture(
                    params=[
                        pytest.param({"loop_factory": loopy.new_event_loop}, id="loopy"),
                        pytest.param({"loop_factory": own_tasks}, id="loopy-own-tasks"),
                    ]
                )
                def anyio_backend(request):
                    return ("asyncio", request.param)
            """,
            "checks.py": CHILD_CHECK,
            "test_on_loopy.py": """
                import anyio
                import pytest

                from checks import check_loop


                @pytest.mark.anyio
                async def test_runs_on_loopy(request):
                    check_loop(request)
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(anyio.sleep, 0.01)
            """,
        },
    )
    assert "test_runs_on_loopy[loopy] PASSED" in output
    assert "test_runs_on_loopy[loopy-own-tasks] PASSED" in output
    assert " 2 passed" in output


@pytest.mark.parametrize("tasks", TASK_MODES)
def test_anyio_run_with_loop_factory(tasks: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's call, word for word; ``LOOPY_TASKS`` picks the task mode."""
    monkeypatch.setenv("LOOPY_TASKS", tasks)

    async def main() -> str:
        expected = loopy.Task if tasks == "loopy" else asyncio.Task
        assert isinstance(asyncio.get_running_loop(), loopy.Loop)
        assert type(asyncio.current_task()) is expected
        # A TCP echo through anyio's own streams, on 127.0.0.1.
        with anyio.fail_after(TIMEOUT):
            return await echo_once()

    async def echo_once() -> str:
        async with await anyio.create_tcp_listener(local_host="127.0.0.1") as listener:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)

            async def serve_one(stream: anyio.abc.SocketStream) -> None:
                async with stream:
                    await stream.send(await stream.receive())

            async with anyio.create_task_group() as tg:
                tg.start_soon(listener.serve, serve_one)
                async with await anyio.connect_tcp("127.0.0.1", port) as client:
                    await client.send(b"ping")
                    reply = await client.receive()
                tg.cancel_scope.cancel()
        return reply.decode()

    assert anyio.run(main, backend_options={"loop_factory": loopy.new_event_loop}) == "ping"
