"""An aiohttp app on loopy, started as ``python aiohttp_app.py PORT``.

``web.run_app`` makes its loop with ``asyncio.new_event_loop()``, which
asks asyncio's policy: after ``loopy.install()`` that is a loopy loop.
"""

from __future__ import annotations

import asyncio
import os
import sys

from aiohttp import WSMsgType, web

import loopy


def where() -> dict[str, object]:
    """The running loop's and task's classes, and this process's id."""
    loop, task = type(asyncio.get_running_loop()), type(asyncio.current_task())
    return {
        "loop": f"{loop.__module__}.{loop.__qualname__}",
        "task": f"{task.__module__}.{task.__qualname__}",
        "pid": os.getpid(),
    }


async def loop_info(request: web.Request) -> web.Response:
    return web.json_response(where())


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.send_json(where())
    async for message in ws:
        if message.type is WSMsgType.TEXT:
            await ws.send_str(message.data)
    return ws


app = web.Application()
app.router.add_get("/loop", loop_info)
app.router.add_get("/ws", echo)

if __name__ == "__main__":
    loopy.install()
    web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]))
