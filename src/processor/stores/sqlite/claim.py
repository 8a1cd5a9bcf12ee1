"""One processor per resume key on a store file, held by the kernel.

Two processors on one key would each count the same events into the
projections (the jobs' unique index keeps the jobs single, not the counts), and
without standby nothing else keeps them apart. So a store that processes holds
an advisory lock (``flock``) on a file beside the store file, one per key, for
as long as it is open. The kernel drops the lock when the process ends, however
it ends: a crash leaves no claim behind, and the file itself is left in place
(removing it would let a third process lock a new file while the second still
holds the old one). With standby, the leader lock and the epochs decide instead.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import socket
from datetime import UTC, datetime
from pathlib import Path

from processor.stores.base import StoreMisconfigured


def claim_path(store: Path, key: str) -> Path:
    """The lock file of ``key`` beside ``store``: named by a digest, since a key is any text."""
    digest = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return store.with_name(f"{store.name}.{digest}.lock")


class KeyClaimed(StoreMisconfigured):
    """Another processor holds the key: the caller says what the user can do about it."""


class Claim:
    """The lock on one key of one store file, taken at once or refused with
    ``KeyClaimed`` naming its holder."""

    def __init__(self, store: Path, key: str) -> None:
        self.path = claim_path(store, key)
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as error:
            raise StoreMisconfigured(f"cannot open {str(self.path)!r}: {error.strerror}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            holder = _holder(fd)
            os.close(fd)
            if not isinstance(error, BlockingIOError):
                raise StoreMisconfigured(f"cannot lock {str(self.path)!r}: {error.strerror}") from None
            raise KeyClaimed(
                f"another processor ({holder}) is processing resume key {key!r} of this store "
                f"(it holds {str(self.path)!r})"
            ) from None
        # Who holds it, for the refusal of the next one; written only once locked.
        os.ftruncate(fd, 0)
        since = datetime.now(UTC).isoformat(timespec="seconds")
        os.write(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": since}).encode())
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the descriptor drops the lock
            self._fd = None


def _holder(fd: int) -> str:
    """The holder as it wrote itself into the file; it may not have written yet."""
    try:
        written = json.loads(os.pread(fd, 4096, 0))
        return f"pid {int(written['pid'])} on {written['host']}, since {written['since']}"
    except (OSError, ValueError, KeyError, TypeError):
        return "pid unknown: it is starting"
