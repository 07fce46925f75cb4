"""Where asyncio's visible behaviour changed between the Pythons loopy supports.

loopy follows the running Python's asyncio wherever a user can see the
difference (see the README's list of differences).  Each flag below names one
such behaviour and the version that brought it, so that the rest of the
package reads ``if versions.EMPTY_DATAGRAMS_ARE_SENT`` instead of comparing
version numbers, and supporting a new Python means reading what its asyncio
changed and adding flags here.
"""

from __future__ import annotations

import sys

_RUNNING = sys.version_info[:2]

#: 3.12: the exception handler runs in the context (``contextvars``) of the
#: callback or task whose error it reports.
EXCEPTION_HANDLER_IN_CONTEXT = _RUNNING >= (3, 12)

#: 3.12: eager tasks (``eager_start=``, ``asyncio.eager_task_factory``).
EAGER_TASKS = _RUNNING >= (3, 12)

#: 3.13: a callback's arguments appear in handle reprs and error reports only
#: in debug mode (they may hold secrets); before, always.
CALLBACK_ARGUMENTS_ONLY_IN_DEBUG = _RUNNING >= (3, 13)

#: 3.13: ``Future.set_exception(StopIteration())`` stores a RuntimeError
#: caused by it instead of refusing it.
WRAP_STOP_ITERATION = _RUNNING >= (3, 13)

#: 3.13: when ``uncancel()`` takes back the last cancellation request, a
#: cancellation that has not been delivered yet is called off too.
UNCANCEL_CLEARS_MUST_CANCEL = _RUNNING >= (3, 13)

#: 3.13: ``create_unix_server(cleanup_socket=True)`` is the default.
UNIX_SERVERS_REMOVE_THEIR_SOCKET = _RUNNING >= (3, 13)

#: 3.13: ``DatagramTransport.sendto(b"")`` sends an empty datagram (earlier
#: versions drop it silently).
EMPTY_DATAGRAMS_ARE_SENT = _RUNNING >= (3, 13)

#: 3.13: a queued datagram counts 8 bytes of header in the write buffer size,
#: so a flood of tiny (or empty) datagrams still reaches the high-water mark.
DATAGRAM_HEADER_SIZE = 8 if _RUNNING >= (3, 13) else 0

#: 3.13: ``create_datagram_endpoint(sock=...)`` names any datagram socket
#: (Unix ones too) in its error, not only UDP.
DATAGRAM_SOCKET_EXPECTED = (
    "A datagram socket was expected" if _RUNNING >= (3, 13) else "A UDP Socket was expected"
)
