"""A small Starlette app, served by uvicorn in ``tests/test_frameworks.py``.

Start it as a user would, from this directory::

    uvicorn --loop loopy:new_event_loop starlette_app:app

Routes: ``/loop`` (JSON: which loop, task and process answered), ``/ws`` (a
websocket that echoes text), ``/stream`` (a streaming response) and ``/hold``
(blocks the worker until the test lets it go; see its docstring).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

#: How many pieces ``/stream`` sends, each its own chunk on the wire.
STREAM_CHUNKS = 5


def _name(kind: type) -> str:
    return f"{kind.__module__}.{kind.__qualname__}"


def where() -> dict[str, object]:
    """The running loop's and task's classes, and this process's id."""
    return {
        "loop": _name(type(asyncio.get_running_loop())),
        "task": _name(type(asyncio.current_task())),
        "pid": os.getpid(),
    }


async def loop_info(request: Request) -> JSONResponse:
    return JSONResponse(where())


async def hold(request: Request) -> JSONResponse:
    """Block this worker's whole loop until the test opens, then closes, a FIFO.

    With ``--workers 2`` the test holds one worker here: the other one is then
    the only process that can accept the next connection, so the test reaches
    both workers without relying on how the kernel spreads connections.
    Opening the FIFO for reading blocks until the test opens it for writing
    (so the test knows this worker is stuck), and reading returns when the
    test closes it.
    """
    with open(os.environ["HOLD_FIFO"], "rb") as fifo:  # blocking the loop is the point
        fifo.read()
    return JSONResponse(where())


async def stream(request: Request) -> StreamingResponse:
    async def pieces() -> AsyncIterator[bytes]:
        for i in range(STREAM_CHUNKS):
            await asyncio.sleep(0)  # each piece from its own step of the task
            yield f"piece {i}\n".encode()

    return StreamingResponse(pieces(), media_type="text/plain")


async def echo(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.send_json(where())
    async for text in websocket.iter_text():
        await websocket.send_text(text)


app = Starlette(
    routes=[
        Route("/loop", loop_info),
        Route("/hold", hold),
        Route("/stream", stream),
        WebSocketRoute("/ws", echo),
    ]
)
