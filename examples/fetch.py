"""A concurrent HTTP/1.1 fetcher built on ``asyncio.open_connection`` alone.

Shows several client connections in flight at once on one thread: each URL
is fetched by its own coroutine (``asyncio.gather``), which writes a ``GET``
request and reads the response with ``readline``/``readexactly``/``read``,
handling ``Content-Length``, ``Transfer-Encoding: chunked`` and
read-until-close bodies.  Plain ``http://`` only.

Run::

    uv run python examples/fetch.py http://example.com/ http://127.0.0.1:8000/

It prints one line per URL, ``URL -> STATUS REASON, N bytes in T ms`` (or
``URL -> error: ...``), in the order given, then ``fetched K of N``.  It
exits 0 if every fetch succeeded, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from urllib.parse import urlsplit

import loopy


async def read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> bytes:
    if "chunked" in headers.get("transfer-encoding", ""):
        body = bytearray()
        while size := int((await reader.readline()).split(b";")[0], 16):
            body += await reader.readexactly(size)
            await reader.readexactly(2)  # the CRLF after each chunk
        while (await reader.readline()).strip():  # trailers, up to the blank line
            pass
        return bytes(body)
    if "content-length" in headers:
        return await reader.readexactly(int(headers["content-length"]))
    return await reader.read()  # no length given: the body ends when the server closes


async def fetch(url: str) -> tuple[str, int]:
    """GET ``url``; return the status line and the body's size."""
    parts = urlsplit(url)
    if parts.scheme != "http" or not parts.hostname:
        raise ValueError("only http://HOST[:PORT]/PATH URLs are supported")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            "User-Agent: loopy-fetch\r\nConnection: close\r\n\r\n".encode()
        )
        await writer.drain()
        status = (await reader.readline()).decode("latin-1").strip()
        if not status.startswith("HTTP/"):
            raise ConnectionError(f"not an HTTP response: {status!r}")
        headers = {}
        while line := (await reader.readline()).decode("latin-1").strip():
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        body = await read_body(reader, headers)
        return status.partition(" ")[2], len(body)
    finally:
        writer.close()
        await writer.wait_closed()


async def timed(url: str) -> str:
    start = time.perf_counter()
    try:
        status, size = await asyncio.wait_for(fetch(url), timeout=30)
    except (OSError, ValueError, asyncio.IncompleteReadError) as exc:
        return f"{url} -> error: {type(exc).__name__}: {exc}"
    return f"{url} -> {status}, {size} bytes in {(time.perf_counter() - start) * 1000:.0f} ms"


async def main(urls: list[str]) -> int:
    results = await asyncio.gather(*(timed(url) for url in urls))
    for line in results:
        print(line)
    ok = sum(" -> error: " not in line for line in results)
    print(f"fetched {ok} of {len(urls)}")
    return 0 if ok == len(urls) else 1


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("urls", nargs="+", metavar="URL", help="http:// URLs to fetch")
    sys.exit(loopy.run(main(parser.parse_args().urls)))
