"""One writer per folder: an advisory lock held for a whole `rlt-prep tokenize` run on its dataset
folder, or a whole `rlt-prep train` run on its run folder.

The lock is ``FOLDER/.rlt-lock``, locked with ``flock`` and holding its holder's host, pid and start
time for the message a second run gets. The kernel drops a ``flock`` when its process dies, however
it dies, so a lock file left by a killed run is stale by construction: the next run takes it over.
The file is removed on release; a run that opened it just before checks, once it holds the lock,
that the name still points at the file it locked, and starts over if not.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import socket
from collections.abc import Iterator
from pathlib import Path

from rlt.dataset._files import writing

LOCK = ".rlt-lock"


class OutputLockedError(FileExistsError):
    """Another run is writing the folder; the message names it."""


@contextlib.contextmanager
def lock_output(out: Path) -> Iterator[None]:
    """Holds ``out``'s lock for the ``with`` block.

    Raises:
        OutputLockedError: another process holds it.
    """
    path = out / LOCK
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe(path)
            os.close(fd)
            raise OutputLockedError(
                f"{out} is being written by another run ({holder}); wait for it to finish, or stop it "
                f"and run again (a stopped run's lock is released with it)"
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder released and removed the file after we opened it: start over
    try:
        started = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": started}
        with writing(path):
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(me).encode())
            os.fsync(fd)
        yield
    finally:
        # Removed while still locked, so no one can lock this file and believe it is the lock.
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _describe(path: Path) -> str:
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        holder = {}
    if not holder:
        return "it has only just started"
    return f"pid {holder.get('pid')} on {holder.get('host')}, started {holder.get('started')}"
