"""Solutions to the exercises of chapter 13, "TLS" (docs/tour.md).

Exercise 13.1: :func:`layers` -- the objects between your protocol and the socket.
Exercise 13.2: :func:`starttls_server` and :func:`starttls_client` -- upgrade a
               plain connection to TLS half-way, as SMTP's STARTTLS does.
"""

from __future__ import annotations

import asyncio
import ssl
from typing import Any


def layers(transport: Any) -> list[str]:
    """Exercise 13.1: class names from the transport a TLS protocol is given, down to the socket's.

    For a TLS connection on loopy: ``_SSLProtocolTransport`` (asyncio's: what
    your protocol writes to) -> ``SSLProtocol`` (asyncio's: encrypts and
    decrypts) -> ``SocketTransport`` (loopy's: moves the encrypted bytes).
    The SSLProtocol is a ``BufferedProtocol``, so the socket transport reads
    into its buffer (``SocketTransport._read_into_buffer``).
    """
    names = [type(transport).__name__]
    tls = getattr(transport, "_ssl_protocol", None)
    if tls is not None:
        names.append(type(tls).__name__)
        names.append(type(tls._transport).__name__)
    return names


async def starttls_server(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, context: ssl.SSLContext
) -> None:
    """Exercise 13.2, server side: answer ``STARTTLS``, upgrade, then echo one line under TLS.

    Use it as ``start_server(functools.partial(starttls_server, context=...), ...)``.
    """
    if await reader.readline() != b"STARTTLS\n":
        writer.close()
        return
    writer.write(b"GO AHEAD\n")
    await writer.drain()
    # The loop's start_tls: pause reading, slide an SSLProtocol in with
    # set_protocol(), handshake, resume.  The reader and writer carry on
    # over the encrypting transport.
    await writer.start_tls(context)
    writer.write(await reader.readline())
    await writer.drain()
    writer.close()
    await writer.wait_closed()


async def starttls_client(
    host: str, port: int, context: ssl.SSLContext, server_hostname: str, line: bytes
) -> tuple[bytes, str]:
    """Exercise 13.2, client side: plain text, then TLS; returns the echo and the TLS version."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"STARTTLS\n")
    if await reader.readline() != b"GO AHEAD\n":
        raise ConnectionError("the server refused STARTTLS")
    await writer.start_tls(context, server_hostname=server_hostname)
    version = writer.get_extra_info("ssl_object").version()
    writer.write(line)
    echo = await reader.readline()
    writer.close()
    await writer.wait_closed()
    return echo, version
