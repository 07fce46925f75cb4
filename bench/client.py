"""The load generator: plain sockets and ``select.epoll``, no event loop under test.

It runs in the orchestrating process, pinned to a core other than the
server's.  Each of N connections sends one request, waits for the whole
response, and sends the next (request/response, one in flight per
connection).  It uses epoll directly rather than ``selectors``, whose
wrapper would add about a microsecond per wake-up to a client that is often
the bottleneck: a Python client costs about as much per message as a fast
server.  After a warm-up it measures for a fixed time: messages
completed, the latency of each (send to last byte received, on the client),
and the server's CPU time from ``/proc/PID/stat`` over exactly that window.

Everything is on 127.0.0.1, bounded in connections and in time: a server
that stops answering for ``STALL_SECONDS`` raises instead of hanging.
"""

from __future__ import annotations

import contextlib
import select
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass

from bench.proc import cpu_ns, cpu_times

STALL_SECONDS = 10.0
READ_SIZE = 65536


@dataclass
class LoadResult:
    """What one measured window produced (times in seconds, latencies in ns).

    ``server_user``/``server_sys`` come from ``/proc/PID/stat`` (10 ms ticks,
    split by sampling), ``server_cpu`` (their sum) from ``schedstat``, exact.
    """

    messages: int
    window: float
    server_user: float
    server_sys: float
    server_cpu: float
    client_cpu: float
    latencies_ns: list[int]

    def metrics(self) -> dict[str, float]:
        """The per-measurement figures the suite reports."""
        n = max(self.messages, 1)
        lat = sorted(self.latencies_ns)
        return {
            "msgs_per_s": self.messages / self.window,
            "user_us_per_msg": self.server_user / n * 1e6,
            "sys_us_per_msg": self.server_sys / n * 1e6,
            "cpu_us_per_msg": self.server_cpu / n * 1e6,
            "p50_us": percentile(lat, 50) / 1e3,
            "p99_us": percentile(lat, 99) / 1e3,
            "server_busy": self.server_cpu / self.window,
            "client_busy": self.client_cpu / self.window,
            "client_cpu_us_per_msg": self.client_cpu / n * 1e6,
            "messages": self.messages,
            "window_s": self.window,
        }


def percentile(sorted_values: list[int], q: float) -> float:
    """The ``q``-th percentile (nearest rank) of an already sorted list; 0 if empty."""
    if not sorted_values:
        return 0.0
    rank = max(0, min(len(sorted_values) - 1, round(q / 100 * len(sorted_values)) - 1))
    return float(sorted_values[rank])


class EchoResponse:
    """An echo response is complete when as many bytes came back as were sent."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.remaining = size

    def received(self, nbytes: int, data: memoryview) -> bool:
        self.remaining -= nbytes
        if self.remaining > 0:
            return False
        self.remaining = self.size
        return True


class HttpResponse:
    """An HTTP/1.1 response is complete after its headers and Content-Length bytes of body."""

    def __init__(self) -> None:
        self.buffer = bytearray()

    def received(self, nbytes: int, data: memoryview) -> bool:
        buffer = self.buffer
        buffer += data[:nbytes]
        end = buffer.find(b"\r\n\r\n")
        if end < 0:
            return False
        headers = bytes(buffer[:end]).lower()
        start = headers.find(b"\r\ncontent-length:")
        if start < 0:
            raise ValueError(f"response without Content-Length: {headers!r}")
        stop = headers.find(b"\r\n", start + 2)
        length = int(headers[start + 17 : stop if stop >= 0 else None])
        if len(buffer) < end + 4 + length:
            return False
        del buffer[: end + 4 + length]
        return True


def http_request(port: int) -> bytes:
    return f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode()


def connect(port: int) -> socket.socket:
    """A blocking connection: a socket with a timeout would poll() before every recv and send."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=STALL_SECONDS)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.settimeout(None)
    return sock


def run_load(
    port: int,
    server_pid: int,
    *,
    request: bytes,
    response: type[EchoResponse] | type[HttpResponse],
    connections: int,
    warmup: float,
    duration: float,
) -> LoadResult:
    """Drive ``connections`` request/response loops; measure ``duration`` s after ``warmup`` s.

    ``response`` is ``EchoResponse`` (expects ``len(request)`` bytes back) or
    ``HttpResponse``.
    """
    buf = bytearray(READ_SIZE)
    view = memoryview(buf)
    socks = [connect(port) for _ in range(connections)]
    expects = [
        EchoResponse(len(request)) if response is EchoResponse else HttpResponse() for _ in socks
    ]
    sent_at = [0] * connections
    latencies: list[int] = []
    messages = 0
    poller = select.epoll()
    index = {sock.fileno(): i for i, sock in enumerate(socks)}
    perf_ns = time.perf_counter_ns
    try:
        for sock in socks:
            poller.register(sock.fileno(), select.EPOLLIN)
        for i, sock in enumerate(socks):
            sent_at[i] = perf_ns()
            sock.sendall(request)

        now = time.perf_counter()
        measure_from = now + warmup
        measure_until = measure_from + duration
        last_progress = now
        measuring = False
        cpu0 = (0.0, 0.0)
        ns0 = 0
        client0 = started = 0.0
        poll = poller.poll
        while True:
            events = poll(1.0)
            now = time.perf_counter()
            if measuring:
                if now >= measure_until:
                    break
            elif now >= measure_from:
                measuring = True
                latencies = []
                messages = 0
                cpu0 = cpu_times(server_pid)
                ns0 = cpu_ns(server_pid)
                client0 = time.process_time()
                started = now
            if not events:
                if now - last_progress > STALL_SECONDS:
                    raise TimeoutError(f"server on port {port} stopped answering")
                continue
            last_progress = now
            for fd, _ in events:
                i = index[fd]
                sock = socks[i]
                nbytes = sock.recv_into(buf)
                if not nbytes:
                    raise ConnectionError(f"server on port {port} closed a connection")
                if expects[i].received(nbytes, view):
                    t = perf_ns()
                    latencies.append(t - sent_at[i])
                    messages += 1
                    sent_at[i] = t
                    sock.sendall(request)
        cpu1 = cpu_times(server_pid)
        ns1 = cpu_ns(server_pid)
        client1 = time.process_time()
        ended = time.perf_counter()
    finally:
        poller.close()
        for sock in socks:
            sock.close()
    return LoadResult(
        messages=messages,
        window=ended - started,
        server_user=cpu1[0] - cpu0[0],
        server_sys=cpu1[1] - cpu0[1],
        server_cpu=(ns1 - ns0) / 1e9,
        client_cpu=client1 - client0,
        latencies_ns=latencies,
    )


@contextlib.contextmanager
def idle_connections(port: int, count: int) -> Iterator[None]:
    """Hold ``count`` connections open to an echo server, each having echoed one byte."""
    socks: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = connect(port)
            socks.append(sock)
            sock.settimeout(STALL_SECONDS)
            sock.sendall(b"x")
            if sock.recv(1) != b"x":
                raise ConnectionError(f"server on port {port} did not echo")
        yield
    finally:
        for sock in socks:
            sock.close()
