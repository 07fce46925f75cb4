"""Real libraries on loopy: aiohttp, websockets, httpx and anyio, aiosqlite, streams.

Each test runs three times: on asyncio's own loop (the reference), on loopy
with asyncio's C Future/Task (``tasks="asyncio"``) and on loopy with its own
pure-Python ones (``tasks="loopy"``).  All traffic stays on 127.0.0.1, every
test is bounded in time, and a fixture checks that no thread or file
descriptor outlives the test.

Two anyio checks pin down why loopy's own Future reports asyncio's class as
its ``__class__``: anyio tells a task's awaited future from other awaitables
with ``isinstance(waiter, asyncio.Future)``
(``anyio/_backends/_asyncio.py``, ``CancelScope._deliver_cancellation`` and
``AsyncIOTaskInfo.has_pending_cancellation``); without it, an item delivered
in the same tick as a cancellation would be lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import random
import socket
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import aiosqlite
import anyio
import anyio.abc
import httpx
import pytest
from aiohttp import web
from websockets.asyncio.client import connect as ws_connect
from websockets.asyncio.server import ServerConnection
from websockets.asyncio.server import serve as ws_serve
from websockets.exceptions import ConnectionClosedOK

import loopy
import loopy.trace

_T = TypeVar("_T")

KiB = 1024
MiB = 1024 * KiB

#: Upper bound for one test's body (pytest-timeout's 60 s is the last resort).
TIMEOUT = 15.0

#: Where anyio (4.16.0) tells a task's awaited future from other objects with
#: ``isinstance(task._fut_waiter, asyncio.Future)``: never true for loopy's own
#: Future, which is not a subclass of the C ``asyncio.Future``.
#: ``tasks`` for each run: None is asyncio's own loop, the reference.
LOOP_PARAMS = [
    pytest.param(None, id="asyncio-loop"),
    pytest.param("asyncio", id="loopy-tasks=asyncio"),
    pytest.param("loopy", id="loopy-tasks=loopy"),
]


def loop_factory(tasks: str | None) -> Callable[[], asyncio.AbstractEventLoop]:
    """asyncio's own loop for None, else a loopy loop in that task mode."""
    if tasks is None:
        return asyncio.new_event_loop
    return functools.partial(loopy.new_event_loop, tasks=tasks)


def check_running_on(tasks: str | None) -> None:
    """Fail unless the running loop and task are the kind that ``tasks`` asks for."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    if tasks is None:
        assert not isinstance(loop, loopy.Loop)
    else:
        assert isinstance(loop, loopy.Loop)
        expected = loopy.Task if tasks == "loopy" else asyncio.Task
        assert type(task) is expected, type(task)


def run(tasks: str | None, main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``main()`` on the loop ``tasks`` picks, bounded by TIMEOUT, and close the loop."""

    async def bounded() -> _T:
        check_running_on(tasks)
        return await asyncio.wait_for(main(), TIMEOUT)

    with asyncio.Runner(loop_factory=loop_factory(tasks)) as runner:
        return runner.run(bounded())


def anyio_run(tasks: str | None, main: Callable[[], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``main()`` with ``anyio.run`` on the loop ``tasks`` picks, bounded by TIMEOUT."""

    async def bounded() -> _T:
        check_running_on(tasks)
        with anyio.fail_after(TIMEOUT):
            return await main()

    options = {"loop_factory": loop_factory(tasks)}
    return anyio.run(bounded, backend="asyncio", backend_options=options)


def _open_fds() -> set[str] | None:
    try:
        return set(os.listdir("/proc/self/fd"))
    except FileNotFoundError:  # not Linux
        return None


@pytest.fixture(autouse=True)
def no_leaks() -> Iterator[None]:
    """No thread and no file descriptor may outlive a test."""
    threads = set(threading.enumerate())
    fds = _open_fds()
    yield
    gc.collect()  # an unclosed socket or file warns (and so fails) now, not later
    for thread in set(threading.enumerate()) - threads:
        # Worker threads that were told to stop may need a moment to get there.
        thread.join(timeout=5.0)
        assert not thread.is_alive(), f"leaked thread {thread!r}"
    if fds is not None:
        leaked = (_open_fds() or set()) - fds
        assert not leaked, f"leaked file descriptors {sorted(leaked)}"


# ----------------------------------------------------------------------
# aiohttp: server and client in one process
# ----------------------------------------------------------------------


class AiohttpApp:
    """A small aiohttp application, and what its handlers saw."""

    def __init__(self) -> None:
        self.app = web.Application(client_max_size=4 * MiB)
        self.app.router.add_get("/", self.hello)
        self.app.router.add_get("/n/{n}", self.number)
        self.app.router.add_post("/echo", self.echo)
        self.app.router.add_get("/ws", self.websocket)
        self.ws_closed: asyncio.Future[tuple[int | None, list[Any]]] | None = None

    async def hello(self, request: web.Request) -> web.Response:
        return web.Response(text="Hello from aiohttp")

    async def number(self, request: web.Request) -> web.Response:
        await asyncio.sleep(0)  # let the other requests interleave
        return web.Response(text=request.match_info["n"])

    async def echo(self, request: web.Request) -> web.Response:
        body = await request.read()
        return web.Response(body=body, headers={"X-Received": str(len(body))})

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        seen: list[Any] = []
        async for message in ws:
            seen.append(message.data)
            if message.type is aiohttp.WSMsgType.TEXT:
                await ws.send_str(message.data)
            elif message.type is aiohttp.WSMsgType.BINARY:
                await ws.send_bytes(message.data)
        assert self.ws_closed is not None
        self.ws_closed.set_result((ws.close_code, seen))
        return ws


@contextlib.asynccontextmanager
async def aiohttp_server(app: AiohttpApp) -> AsyncIterator[str]:
    """Serve ``app`` on 127.0.0.1, a free port; yields its base URL."""
    runner = web.AppRunner(app.app)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        host, port = runner.addresses[0][:2]
        assert host == "127.0.0.1"
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_aiohttp_get_hello(tasks: str | None) -> None:
    async def main() -> None:
        async with (
            aiohttp_server(AiohttpApp()) as url,
            aiohttp.ClientSession(url) as session,
            session.get("/") as response,
        ):
            assert response.status == 200
            assert response.headers["Content-Type"].startswith("text/plain")
            assert await response.text() == "Hello from aiohttp"

    run(tasks, main)


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_aiohttp_echo_one_mebibyte(tasks: str | None) -> None:
    body = random.Random(1).randbytes(MiB)

    async def main() -> None:
        async with (
            aiohttp_server(AiohttpApp()) as url,
            aiohttp.ClientSession(url) as session,
            session.post("/echo", data=body) as response,
        ):
            assert response.status == 200
            assert response.headers["X-Received"] == str(MiB)
            echoed = await response.read()
        assert len(echoed) == len(body)
        assert echoed == body

    run(tasks, main)


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_aiohttp_200_concurrent_requests(tasks: str | None) -> None:
    async def main() -> None:
        async with aiohttp_server(AiohttpApp()) as url, aiohttp.ClientSession(url) as session:

            async def fetch(n: int) -> str:
                async with session.get(f"/n/{n}") as response:
                    assert response.status == 200
                    return await response.text()

            answers = await asyncio.gather(*(fetch(n) for n in range(200)))
        assert answers == [str(n) for n in range(200)]

    run(tasks, main)


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_aiohttp_websocket_echo(tasks: str | None) -> None:
    messages: list[str | bytes] = ["hello", b"\x00\x01\x02", "é" * 1000, os.urandom(70_000), ""]

    async def main() -> None:
        app = AiohttpApp()
        app.ws_closed = asyncio.get_running_loop().create_future()
        async with aiohttp_server(app) as url, aiohttp.ClientSession(url) as session:
            async with session.ws_connect("/ws") as ws:
                for message in messages:
                    if isinstance(message, str):
                        await ws.send_str(message)
                        assert await ws.receive_str() == message
                    else:
                        await ws.send_bytes(message)
                        assert await ws.receive_bytes() == message
                assert await ws.close(code=4001, message=b"done")
                assert ws.closed
                assert ws.close_code == aiohttp.WSCloseCode.OK  # the server's reply
            server_close_code, seen = await app.ws_closed
        assert server_close_code == 4001
        assert seen == messages

    run(tasks, main)


# ----------------------------------------------------------------------
# websockets (its asyncio implementation)
# ----------------------------------------------------------------------


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_websockets_echo_and_clean_close(tasks: str | None) -> None:
    messages: list[str | bytes] = ["hello", b"\xff\x00binary", "ünïcødé", os.urandom(100_000)]

    async def main() -> None:
        server_saw: asyncio.Future[tuple[list[str | bytes], int | None, str | None]]
        server_saw = asyncio.get_running_loop().create_future()

        async def echo(ws: ServerConnection) -> None:
            seen = []
            async for message in ws:  # ends on a clean close
                seen.append(message)
                await ws.send(message)
            server_saw.set_result((seen, ws.close_code, ws.close_reason))

        async with ws_serve(echo, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            async with ws_connect(f"ws://127.0.0.1:{port}", proxy=None) as ws:
                for message in messages:
                    await ws.send(message)
                    assert await ws.recv() == message
                await ws.close(code=1000, reason="bye")
                with pytest.raises(ConnectionClosedOK):
                    await ws.recv()
                assert ws.close_code == 1000
                assert ws.close_reason == "bye"
            seen, code, reason = await server_saw
        assert seen == messages
        assert (code, reason) == (1000, "bye")

    run(tasks, main)


# ----------------------------------------------------------------------
# httpx, whose transport (httpcore) does its networking through anyio
# ----------------------------------------------------------------------


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_httpx_async_client(tasks: str | None) -> None:
    async def main() -> None:
        async with (
            aiohttp_server(AiohttpApp()) as url,
            # trust_env=False: no proxy from the environment, only 127.0.0.1.
            httpx.AsyncClient(base_url=url, trust_env=False, timeout=10.0) as client,
        ):
            for n in range(10):
                response = await client.get(f"/n/{n}")
                assert response.status_code == 200
                assert response.text == str(n)
            responses = await asyncio.gather(*(client.get(f"/n/{n}") for n in range(10, 20)))
            assert [r.text for r in responses] == [str(n) for n in range(10, 20)]
            body = random.Random(2).randbytes(256 * KiB)
            echoed = await client.post("/echo", content=body)
            assert echoed.content == body

    run(tasks, main)


# ----------------------------------------------------------------------
# anyio, directly
# ----------------------------------------------------------------------


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_anyio_task_group_and_cancel_scopes(tasks: str | None) -> None:
    async def main() -> None:
        done: list[str] = []

        async def worker(name: str, checkpoints: int) -> None:
            for _ in range(checkpoints):
                await anyio.lowlevel.checkpoint()
            done.append(name)

        async def service(*, task_status: anyio.abc.TaskStatus[str]) -> None:
            task_status.started("ready")
            await anyio.sleep_forever()

        async with anyio.create_task_group() as tg:
            for i in range(5):
                tg.start_soon(worker, f"w{i}", 5 - i)
            assert await tg.start(service) == "ready"
            await anyio.wait_all_tasks_blocked()
            tg.cancel_scope.cancel()  # stops the service; the workers are done
        assert sorted(done) == [f"w{i}" for i in range(5)]
        assert tg.cancel_scope.cancel_called

        with pytest.raises(TimeoutError), anyio.fail_after(0.05):
            await anyio.sleep(30)

        with anyio.move_on_after(0.05) as scope:
            await anyio.sleep(30)
        assert scope.cancelled_caught

        # A shielded scope finishes its work even though its parent is cancelled.
        shielded_finished = False
        with anyio.CancelScope() as outer:
            outer.cancel()
            with anyio.CancelScope(shield=True):
                await anyio.sleep(0.01)
                shielded_finished = True
            await anyio.sleep(30)  # cancelled here, on leaving the shield
        assert shielded_finished
        assert outer.cancelled_caught

        # An error in a child cancels its siblings and comes out as a group.
        async def fail() -> None:
            await anyio.sleep(0.01)
            raise ValueError("boom")

        sibling_cancelled = anyio.Event()

        async def sibling() -> None:
            try:
                await anyio.sleep_forever()
            except anyio.get_cancelled_exc_class():
                sibling_cancelled.set()
                raise

        async def failing_group() -> None:
            async with anyio.create_task_group() as tg:
                tg.start_soon(sibling)
                tg.start_soon(fail)

        with pytest.raises(ExceptionGroup) as caught:
            await failing_group()
        assert caught.group_contains(ValueError, match="boom")
        assert sibling_cancelled.is_set()

    anyio_run(tasks, main)


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_anyio_threads(tasks: str | None) -> None:
    async def main() -> None:
        loop_thread = threading.get_ident()

        def blocking(n: int) -> tuple[int, int]:
            # From the worker thread, call back into the loop (call_soon_threadsafe).
            in_loop = anyio.from_thread.run_sync(threading.get_ident)
            assert in_loop == loop_thread
            return n * n, threading.get_ident()

        results: dict[int, tuple[int, int]] = {}

        async def one(n: int) -> None:
            results[n] = await anyio.to_thread.run_sync(blocking, n)

        async with anyio.create_task_group() as tg:
            for n in range(8):
                tg.start_soon(one, n)
        assert {n: square for n, (square, _) in results.items()} == {n: n * n for n in range(8)}
        assert all(ident != loop_thread for _, ident in results.values())

    anyio_run(tasks, main)


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_anyio_tcp_echo(tasks: str | None) -> None:
    payload = random.Random(3).randbytes(512 * KiB)

    async def main() -> None:
        async def echo(stream: anyio.abc.SocketStream) -> None:
            async with stream:
                with contextlib.suppress(anyio.EndOfStream):
                    while True:
                        await stream.send(await stream.receive())

        listener = await anyio.create_tcp_listener(local_host="127.0.0.1", local_port=0)
        async with listener, anyio.create_task_group() as tg:
            port = listener.extra(anyio.abc.SocketAttribute.local_port)
            tg.start_soon(listener.serve, echo)
            async with await anyio.connect_tcp("127.0.0.1", port) as client:
                assert client.extra(anyio.abc.SocketAttribute.remote_port) == port
                for line in (b"one", b"two", b"three"):
                    await client.send(line)
                    assert await client.receive() == line
                await client.send(payload)
                await client.send_eof()
                received = bytearray()
                with contextlib.suppress(anyio.EndOfStream):
                    while True:
                        received += await client.receive()
            assert received == payload
            tg.cancel_scope.cancel()

    anyio_run(tasks, main)


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_anyio_item_delivered_in_the_same_tick_as_a_cancel_is_not_lost(
    tasks: str | None,
) -> None:
    """send_nowait() hands the item over; a cancel in the same tick must not lose it.

    The receiver waits on an asyncio.Event's future.  send_nowait() stores the
    item and sets the event, so that future is done when the cancel scope is
    cancelled.  anyio then leaves the task alone (its waiter is done) and the
    task wakes up with the item.  With loopy's own Future the isinstance check
    fails, anyio cancels the task, and the item -- which the sender was told
    had been delivered -- is lost.
    """

    async def main() -> tuple[list[int], bool]:
        send, receive = anyio.create_memory_object_stream[int](0)
        received: list[int] = []
        scope = anyio.CancelScope()

        async def receiver() -> None:
            with scope:
                received.append(await receive.receive())

        async with send, receive, anyio.create_task_group() as tg:
            tg.start_soon(receiver)
            await anyio.wait_all_tasks_blocked()
            send.send_nowait(42)  # delivered to the waiting receiver
            scope.cancel()
        return received, scope.cancelled_caught

    assert anyio_run(tasks, main) == ([42], False)


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_anyio_task_info_sees_a_pending_cancellation(tasks: str | None) -> None:
    """TaskInfo.has_pending_cancellation(): true once the awaited future is cancelled."""

    async def main() -> bool:
        event = asyncio.Event()
        task = asyncio.create_task(event.wait())
        await asyncio.sleep(0)  # the task now waits on the event's future
        task.cancel()  # cancels that future; the task has not run yet
        [info] = [info for info in anyio.get_running_tasks() if info.id == id(task)]
        pending = info.has_pending_cancellation()
        with pytest.raises(asyncio.CancelledError):
            await task
        return pending

    assert anyio_run(tasks, main) is True


# ----------------------------------------------------------------------
# aiosqlite: a thread per connection, results come back by call_soon_threadsafe
# ----------------------------------------------------------------------


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_aiosqlite_thousand_rows_in_a_transaction(tasks: str | None, tmp_path: Path) -> None:
    path = tmp_path / "items.db"
    rows = [(i, f"item-{i}", i * 0.5) for i in range(1000)]

    async def main() -> None:
        async with aiosqlite.connect(path) as db:
            await db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, value REAL)")
            await db.commit()
            await db.execute("BEGIN")
            await db.executemany("INSERT INTO items VALUES (?, ?, ?)", rows)
            assert db.in_transaction
            await db.commit()
            assert not db.in_transaction

            # A rolled-back insert leaves no trace.
            await db.execute("INSERT INTO items VALUES (1000, 'ghost', 0)")
            await db.rollback()

            async with db.execute("SELECT id, name, value FROM items ORDER BY id") as cursor:
                assert await cursor.fetchall() == rows

            async def scalar(sql: str) -> Any:
                async with db.execute(sql) as cursor:
                    row = await cursor.fetchone()
                    assert row is not None
                    return row[0]

            count, total = await asyncio.gather(
                scalar("SELECT COUNT(*) FROM items"), scalar("SELECT SUM(value) FROM items")
            )
            assert count == 1000
            assert total == sum(value for _, _, value in rows)

        # The rows are on disk: a second connection sees them.
        async with (
            aiosqlite.connect(path) as db,
            db.execute("SELECT COUNT(*) FROM items") as cursor,
        ):
            assert await cursor.fetchone() == (1000,)

    run(tasks, main)


# ----------------------------------------------------------------------
# asyncio streams: drain() holds a writer back while its peer does not read
# ----------------------------------------------------------------------


@pytest.mark.parametrize("tasks", LOOP_PARAMS)
def test_streams_drain_backpressure(tasks: str | None) -> None:
    total = 16 * MiB
    chunk = 64 * KiB
    data = random.Random(4).randbytes(total)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        writer_blocked = asyncio.Event()  # the writer is in a drain() that must wait
        state = {"sent": 0, "in_drain": False}
        received: asyncio.Future[bytes] = loop.create_future()

        async def slow_reader(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            try:
                transport = writer.transport
                transport.pause_reading()
                await writer_blocked.wait()
                # Nobody reads: the writer must stay where it is, however long
                # the loop keeps running.
                sent = state["sent"]
                for _ in range(50):
                    await asyncio.sleep(0)
                assert state["in_drain"]
                assert state["sent"] == sent < total
                transport.resume_reading()

                # Read the rest slowly: pause again after every 2 MiB.
                buffer = bytearray()
                while piece := await reader.read(256 * KiB):
                    before = len(buffer)
                    buffer += piece
                    if len(buffer) // (2 * MiB) != before // (2 * MiB):
                        transport.pause_reading()
                        for _ in range(5):
                            await asyncio.sleep(0)
                        transport.resume_reading()
                received.set_result(bytes(buffer))
            except BaseException as error:
                received.set_exception(error)
            finally:
                writer.close()
                await writer.wait_closed()

        # Small kernel buffers on both ends, so that the transport's own
        # buffer has to take the overflow (and drain() has to wait) well
        # before 16 MiB.
        listening = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB)
        listening.bind(("127.0.0.1", 0))
        server = await asyncio.start_server(slow_reader, sock=listening)
        async with server:
            client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            client.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KiB)
            client.setblocking(False)
            try:
                await loop.sock_connect(client, listening.getsockname())
            except BaseException:
                client.close()
                raise
            reader, writer = await asyncio.open_connection(sock=client)
            transport = writer.transport
            low, high = transport.get_write_buffer_limits()
            assert 0 <= low <= high
            most_buffered = 0
            for offset in range(0, total, chunk):
                writer.write(data[offset : offset + chunk])
                state["sent"] += chunk
                buffered = transport.get_write_buffer_size()
                most_buffered = max(most_buffered, buffered)
                if buffered > high:
                    writer_blocked.set()
                state["in_drain"] = True
                await writer.drain()
                state["in_drain"] = False
                # drain() returned: the buffer is back under the high-water mark.
                assert transport.get_write_buffer_size() <= high
            writer.write_eof()
            assert writer_blocked.is_set()
            # Bounded: never more than one chunk over the high-water mark.
            assert high < most_buffered <= high + chunk

            arrived = await received
            assert len(arrived) == total
            assert arrived == data
            assert await reader.read() == b""  # the server closed its end
            writer.close()
            await writer.wait_closed()

    run(tasks, main)


@pytest.mark.parametrize("tasks", ["asyncio", "loopy"])
def test_tracing_an_aiohttp_app(tasks: str, tmp_path: Path) -> None:
    """The trace tools work on a real application, not only on the seed program."""
    trace_path = tmp_path / "aiohttp.json"

    async def main() -> None:
        with loopy.tracing(trace_path):
            async with aiohttp_server(AiohttpApp()) as url, aiohttp.ClientSession(url) as session:
                for _ in range(5):
                    async with session.get("/") as response:
                        assert await response.text() == "Hello from aiohttp"

    run(tasks, main)
    trace = loopy.trace.load_trace(trace_path)
    summary = loopy.trace.summarize(trace)
    assert summary.iterations > 10
    # Every task the trace saw is accounted for: no "created 1, finished 3".
    assert summary.tasks_seen == summary.tasks_finished + summary.tasks_unfinished
    if sys.version_info >= (3, 12):
        # aiohttp builds its tasks directly (asyncio.Task(..., eager_start=True)):
        # the connection handler enters the trace at its first wake-up (first
        # sight); each request's task finishes inside its eager first step,
        # never reaching the loop, so no trace can see it.
        assert summary.tasks_first_seen >= 1
    else:
        assert summary.tasks_created >= 5  # aiohttp runs each request in a create_task task
    names = {e["name"] for e in trace["traceEvents"] if e.get("cat") == "task-step"}
    assert any("(coro: " in name for name in names)
    page = loopy.trace.write_viewer(trace_path)
    assert page.read_text().count("drawn-iterations") >= 1
    assert "iterations" in loopy.trace.format_summary(summary)
