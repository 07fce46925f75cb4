"""Where watchable processes leave their sockets, and how that place is kept private.

Each watchable process listens on one Unix socket named after its PID,
``<dir>/<pid>.sock``, where ``<dir>`` is ``$XDG_RUNTIME_DIR/loopy`` when
that variable names a directory (systemd makes it per user, mode 0700),
else ``/tmp/loopy-<uid>``.  Nothing listens on TCP.

The directory is the first of two locks: it is created with mode 0700 and,
before anything is put in or read from it, checked to be a real directory
(not a symlink someone planted in ``/tmp``), owned by this user, and closed
to everyone else.  The second lock is the peer check of each connection
(``SO_PEERCRED``, in ``server.py``).

A process killed by a signal cannot remove its socket.  Such stale sockets
are recognised by their PID (no such process) and removed by whoever lists
the directory next (:func:`live_pids`).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

__all__ = [
    "MonitorDirError",
    "live_pids",
    "private_dir",
    "process_exists",
    "socket_dir",
    "socket_path",
]

SUFFIX = ".sock"


class MonitorDirError(Exception):
    """The socket directory exists but is not safe to use (wrong owner, mode or type)."""


def socket_dir() -> Path:
    """The directory of this user's monitor sockets (not created: see :func:`private_dir`)."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return Path(runtime) / "loopy"
    return Path(f"/tmp/loopy-{os.getuid()}")  # private: checked in private_dir


def private_dir(*, create: bool) -> Path | None:
    """The socket directory, checked; None when it does not exist and ``create`` is false.

    Raises :class:`MonitorDirError` when it exists but another user owns
    it, others may enter it, or it is not a directory: a socket put there
    could be reached, or replaced, by someone else.
    """
    path = socket_dir()
    if create:
        try:
            os.mkdir(path, 0o700)
        except FileExistsError:
            pass
    try:
        info = os.lstat(path)
    except FileNotFoundError:
        return None
    if not stat.S_ISDIR(info.st_mode):
        raise MonitorDirError(f"{path} is not a directory")
    if info.st_uid != os.geteuid():
        raise MonitorDirError(f"{path} belongs to uid {info.st_uid}, not to this user")
    if info.st_mode & 0o077:
        raise MonitorDirError(f"{path} is open to other users (mode {info.st_mode & 0o777:o})")
    return path


def socket_path(directory: Path, pid: int) -> Path:
    """Where process ``pid`` listens."""
    return directory / f"{pid}{SUFFIX}"


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` exists (of any user) and has not exited.

    An exited process whose parent has not reaped it yet (a zombie) has
    exited: it will never answer again.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # it exists, it is someone else's
    try:
        with open(f"/proc/{pid}/stat", "rb") as file:
            state = file.read().rpartition(b")")[2].split()[0]
    except (OSError, IndexError):  # pragma: no cover - no /proc, or it just went
        return True
    return state != b"Z"


def live_pids(directory: Path) -> list[int]:
    """The PIDs with a socket in ``directory``, sorted; sockets of dead processes are removed."""
    pids = []
    for entry in os.listdir(directory):
        name, dot, suffix = entry.partition(".")
        if f"{dot}{suffix}" != SUFFIX or not name.isdigit():
            continue  # not ours (a half-made temporary name included)
        pid = int(name)
        if process_exists(pid):
            pids.append(pid)
        else:
            remove_stale(directory / entry)
    return sorted(pids)


def remove_stale(path: Path) -> None:
    """Remove the socket of a process that is gone (someone else may have just done it)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
