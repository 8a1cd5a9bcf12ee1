"""One processor per store file, held by the kernel.

The projections are the file's, whatever the processor's resume key: two
processors on one file would each count every event into them (the jobs'
unique index keeps the jobs single, not the counts), and without standby
nothing else keeps them apart. So a store that processes holds an advisory lock
(``flock``) on a file beside the store file for as long as it is open. The
kernel drops the lock when the process ends, however it ends: a crash leaves no
claim behind, and the file itself is left in place (removing it would let a
third process lock a new file while the second still holds the old one). With
standby, the leader lock and the epochs decide instead.
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import weakref
from datetime import UTC, datetime
from pathlib import Path

from processor.stores.base import StoreMisconfigured


def claim_path(store: Path) -> Path:
    """The lock file beside ``store``, by the file's real path: a symbolic link
    to it must not name a lock of its own."""
    real = Path(os.path.realpath(store))
    return real.with_name(f"{real.name}.processor.lock")


class StoreClaimed(StoreMisconfigured):
    """Another processor holds the store: the caller says what the user can do about it."""


class Claim:
    """The lock on one store file, taken at once or refused with
    ``StoreClaimed`` naming its holder."""

    def __init__(self, store: Path, key: str) -> None:
        self.path = claim_path(store)
        shown = str(self.path)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise StoreMisconfigured(f"cannot open {shown!r}: {error.strerror}") from None
        # Closed with the claim, or when it is collected unreleased: the lock goes with it.
        self._closer = weakref.finalize(self, os.close, fd)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            self.release()
            refusal = f"another processor ({holder}) is processing this store (it holds {shown!r})"
            raise StoreClaimed(refusal) from None
        except OSError as error:
            self.release()
            raise StoreMisconfigured(f"cannot lock {shown!r}: {error.strerror}") from None
        # Who holds it, for the refusal of the next one; written only once locked.
        since = datetime.now(UTC).isoformat(timespec="seconds")
        written = {"pid": os.getpid(), "host": socket.gethostname(), "since": since, "resume_key": key}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(written).encode())
        except OSError as error:
            self.release()
            raise StoreMisconfigured(f"cannot write {shown!r}: {error.strerror}") from None

    def release(self) -> None:
        self._closer()  # closing the descriptor drops the lock; once only


def _holder(fd: int) -> str:
    """The holder as it wrote itself into the file; it may not have written yet."""
    try:
        written = json.loads(os.pread(fd, 4096, 0))
        return (
            f"pid {int(written['pid'])} on {written['host']}, since {written['since']}, "
            f"resume key {written['resume_key']!r}"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown: it is starting"
