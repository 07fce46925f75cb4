"""Check an installed loopy wheel the way a user would meet it.

Run with the Python of a fresh virtual environment into which only the wheel
was installed, from a directory outside the checkout (so ``import loopy``
cannot find the source tree).  Each step prints one line; the first failure
raises and the exit status is 1.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import loopy  # (sys.path[0] is .ci/, not the checkout: this is the installed wheel)

BIN = Path(sys.executable).parent
TIMEOUT = 20.0  # seconds for any one step


def step(name: str) -> None:
    print(f"wheel check: {name}", flush=True)


def the_package_comes_from_the_wheel() -> None:
    location = Path(loopy.__file__).resolve().parent
    prefix = Path(sys.prefix).resolve()
    assert prefix in location.parents, f"loopy imported from {location}, not from {prefix}"
    assert (location / "py.typed").is_file(), "py.typed is missing from the wheel"
    assert (location / "trace" / "viewer.py").is_file(), "the trace viewer is missing"
    step(f"import loopy from {location} (py.typed present)")


def the_command_answers_help() -> None:
    done = subprocess.run(
        [BIN / "loopy", "--help"], capture_output=True, text=True, timeout=TIMEOUT, check=False
    )
    assert done.returncode == 0, done.stderr
    assert "usage: loopy" in done.stdout, done.stdout
    step("loopy --help")


def read_until(stream: object, pattern: str, deadline: float) -> re.Match[str]:
    """Lines of the program's log until one matches ``pattern``."""
    seen = []
    while time.monotonic() < deadline:
        line = stream.readline()  # type: ignore[attr-defined]
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"no line matching {pattern!r} in:\n{''.join(seen)}")


def the_program_serves_a_client(trace: Path) -> None:
    program = subprocess.Popen(
        [BIN / "loopy", "--port", "0", "--interval", "0.2", "--trace", trace],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + TIMEOUT
        port = int(
            read_until(program.stdout, r"Listening on \('127\.0\.0\.1', (\d+)\)", deadline)[1]
        )
        read_until(program.stdout, r"Count: 1\b", deadline)
        with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
            client.sendall(b"hello from the wheel check\n")
            read_until(program.stdout, r"Recvd .*hello from the wheel check", deadline)
        read_until(program.stdout, r"Closed \('127\.0\.0\.1'", deadline)
        program.send_signal(signal.SIGINT)
        read_until(program.stdout, r"Shutting down \(SIGINT\)", deadline)
        assert program.wait(TIMEOUT) == 0, f"exit status {program.returncode}"
    finally:
        if program.poll() is None:
            program.kill()
            program.wait()
    assert trace.stat().st_size > 0, "no trace written"
    step("loopy --port 0: ticks, a client's bytes logged, SIGINT exits 0, trace written")


def the_trace_tools_read_it(trace: Path) -> None:
    page = trace.with_suffix(".html")
    for args in (["trace", "summary", trace], ["trace", "view", trace, "-o", page]):
        done = subprocess.run(
            [BIN / "loopy", *args], capture_output=True, text=True, timeout=TIMEOUT, check=False
        )
        assert done.returncode == 0, done.stdout + done.stderr
    assert "<html" in page.read_text(encoding="utf-8").lower(), "the viewer page has no HTML"
    step("loopy trace summary / trace view")


ASYNCIO_PROGRAM = """
import asyncio
import loopy

async def main():
    loop = asyncio.get_running_loop()
    assert isinstance(loop, loopy.Loop), type(loop)
    reader, writer = await asyncio.open_connection(*server_address)
    writer.write(b"ping")
    await writer.drain()
    answer = await reader.read(4)
    writer.close()
    await writer.wait_closed()
    return answer

async def serve():
    async def echo(reader, writer):
        writer.write(await reader.read(4))
        await writer.drain()
        writer.close()
    server = await asyncio.start_server(echo, "127.0.0.1", 0)
    global server_address
    server_address = server.sockets[0].getsockname()
    async with server:
        return await main()

print(loopy.run(serve()))
"""


def an_asyncio_program_runs_on_loopy() -> None:
    done = subprocess.run(
        [sys.executable, "-c", ASYNCIO_PROGRAM],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "b'ping'", done.stdout
    step("an asyncio program (streams) on loopy.run")


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="loopy-wheel-") as directory:
        os.chdir(directory)
        the_package_comes_from_the_wheel()
        the_command_answers_help()
        trace = Path(directory, "run.json")
        the_program_serves_a_client(trace)
        the_trace_tools_read_it(trace)
        an_asyncio_program_runs_on_loopy()
    return 0


if __name__ == "__main__":
    sys.exit(main())
