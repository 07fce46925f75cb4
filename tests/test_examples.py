"""The examples in ``examples/``, each run as a real program and talked to over real sockets."""

from __future__ import annotations

import http.server
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEADLINE = 10.0


class Program:
    """An example running as a subprocess, its merged output read line by line by a thread."""

    def __init__(self, name: str, *args: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, f"examples/{name}.py", *args],
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.output: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def next_line(self) -> str:
        line = self.lines.get(timeout=DEADLINE)
        assert line is not None, f"program ended early: {''.join(self.output)}"
        self.output.append(line)
        return line

    def port(self) -> int:
        first = self.next_line()
        match = re.search(r"127\.0\.0\.1:(\d+)$", first.strip())
        assert match, first
        return int(match.group(1))

    def finish(self) -> tuple[int, str]:
        """Wait for the exit; return the exit code and everything it printed."""
        code = self.proc.wait(timeout=DEADLINE)
        self.reader.join(timeout=DEADLINE)
        while (line := self.lines.get_nowait()) is not None:
            self.output.append(line)
        return code, "".join(self.output)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.reader.join(timeout=DEADLINE)
        if self.proc.stdout is not None:
            self.proc.stdout.close()


@contextmanager
def server(name: str) -> Iterator[tuple[Program, int]]:
    """Start a serving example on a free port; on leaving, SIGINT it and check a clean exit."""
    program = Program(name, "--port", "0")
    try:
        yield program, program.port()
        program.proc.send_signal(signal.SIGINT)
        code, output = program.finish()
        assert code == 0, output
        assert "Traceback" not in output, output
    finally:
        program.kill()


def run_to_end(name: str, *args: str) -> str:
    program = Program(name, *args)
    try:
        code, output = program.finish()
        assert code == 0, output
        assert "Traceback" not in output, output
        return output
    finally:
        program.kill()


def connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=DEADLINE)


def recv_exactly(sock: socket.socket, n: int) -> bytes:
    data = bytearray()
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        assert chunk, f"connection closed after {len(data)} of {n} bytes"
        data += chunk
    return bytes(data)


@pytest.mark.parametrize("name", ["echo_callbacks", "echo_sock", "echo_protocol"])
def test_echo_servers(name: str) -> None:
    big = bytes(range(256)) * 400  # 100 KB
    with server(name) as (_, port), connect(port) as a, connect(port) as b:
        for message in [b"hello\n", b"x", big, b"bye\n"]:
            a.sendall(message)
            b.sendall(message[::-1])
            assert recv_exactly(a, len(message)) == message
            assert recv_exactly(b, len(message)) == message[::-1]
        a.shutdown(socket.SHUT_WR)  # end of file: the server hangs up too
        assert a.recv(1) == b""


def test_producer_consumer() -> None:
    output = run_to_end("producer_consumer")
    assert "p0 put p0-0" in output
    assert "handled p2-3" in output
    assert "summary: 12 produced, 12 consumed" in output


def test_timeouts() -> None:
    lines = run_to_end("timeouts").splitlines()
    assert lines[-1] == "done"
    assert any(line.startswith("1. asyncio.timeout: gave up after 0.") for line in lines)
    for expected in [
        "2. wait_for, fast: fast finished",
        "   slow was cancelled",
        "2. wait_for, slow: TimeoutError",
        "3. cancel: task.cancelled() is True",
        "4. shield: the wait timed out, work.done() is False",
        "4. shield: the work went on: shielded work finished",
    ]:
        assert expected in lines


def test_chat() -> None:
    with server("chat") as (_, port), connect(port) as a, a.makefile("rb") as a_file:
        a_addr = a_file.readline().decode().removeprefix("welcome ").strip()
        assert a_addr == f"127.0.0.1:{a.getsockname()[1]}"
        with connect(port) as b, b.makefile("rb") as b_file:
            b_addr = b_file.readline().decode().removeprefix("welcome ").strip()
            assert a_file.readline() == f"{b_addr} joined\n".encode()
            a.sendall(b"hello from a\n")
            assert b_file.readline() == f"{a_addr}: hello from a\n".encode()
            b.sendall(b"hi a\nhow are you?\n")
            assert a_file.readline() == f"{b_addr}: hi a\n".encode()
            assert a_file.readline() == f"{b_addr}: how are you?\n".encode()
        assert a_file.readline() == f"{b_addr} left\n".encode()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.path == "/chunked":
            self.send_response(200)
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for chunk in [b"hello ", b"chunked ", b"world"]:
                self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            self.wfile.write(b"0\r\n\r\n")
            return
        body = b"x" * 100_000 if self.path == "/big" else b"hello"
        self.send_response(200 if self.path in ("/big", "/small") else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_fetch() -> None:
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        base = f"http://127.0.0.1:{httpd.server_address[1]}"
        paths = ["/small", "/big", "/chunked", "/missing"]
        output = run_to_end("fetch", *(base + path for path in paths))
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=DEADLINE)
    lines = output.splitlines()
    assert lines[0].startswith(f"{base}/small -> 200 OK, 5 bytes in ")
    assert lines[1].startswith(f"{base}/big -> 200 OK, 100000 bytes in ")
    assert lines[2].startswith(f"{base}/chunked -> 200 OK, 19 bytes in ")
    assert lines[3].startswith(f"{base}/missing -> 404 Not Found, 5 bytes in ")
    assert lines[4] == "fetched 4 of 4"


def test_fetch_reports_errors() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))  # a port nobody listens on
        url = f"http://127.0.0.1:{unused.getsockname()[1]}/"
        program = Program("fetch", url, "https://example.com/")
        try:
            code, output = program.finish()
        finally:
            program.kill()
    assert code == 1, output
    assert f"{url} -> error: ConnectionRefusedError" in output
    assert "https://example.com/ -> error: ValueError: only http://" in output
    assert "fetched 0 of 2" in output
    assert "Traceback" not in output


def read_until(program: Program, text: str) -> str:
    """Read lines until one contains ``text``; return it (fail after DEADLINE seconds)."""
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        line = program.next_line()
        if text in line:
            return line
    raise AssertionError(f"no line with {text!r} in {DEADLINE} s: {''.join(program.output)}")


def test_seed() -> None:
    program = Program("seed", "--port", "0", "--interval", "0.1")
    try:
        port = program.port()
        read_until(program, "Count: 0")
        with connect(port) as a, connect(port) as b:
            a_addr = f"127.0.0.1:{a.getsockname()[1]}"
            b_addr = f"127.0.0.1:{b.getsockname()[1]}"
            read_until(program, f"accept {a_addr}")
            read_until(program, f"accept {b_addr}")
            a.sendall(b"hello\n")
            read_until(program, f"{a_addr} sent b'hello\\n'")
            read_until(program, "Count: ")  # ticking on while clients are connected
            b.sendall(b"from b")
            read_until(program, f"{b_addr} sent b'from b'")
            a.close()
            read_until(program, f"closed {a_addr}")
            # Ctrl-C with b still connected: b is closed, and the program exits 0.
            program.proc.send_signal(signal.SIGINT)
            assert b.recv(1) == b""
        code, output = program.finish()
    finally:
        program.kill()
    assert code == 0, output
    assert "Traceback" not in output, output
    lines = output.splitlines()
    assert lines[-1].endswith(" bye")
    assert all(line.split()[2] == "MainThread" for line in lines), output
    counts = [int(line.rsplit(" ", 1)[1]) for line in lines if " Count: " in line]
    assert counts == list(range(len(counts)))
    assert len(counts) >= 2
