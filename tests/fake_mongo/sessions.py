"""Sessions and transactions: a transaction stages its writes and applies them
together when its callback returns."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tests.fake_mongo.server import FakeMongo


class FakeSession:
    """A session whose transaction applies its writes when the callback returns."""

    def __init__(self, server: FakeMongo) -> None:
        self._server = server
        self.staged: list[Callable[[], None]] | None = None
        # The double's reads see every write at once, and its streams all of them:
        # no time for a reader to wait for.
        self.operation_time = None

    def __enter__(self) -> FakeSession:
        return self

    def __exit__(self, *exc: object) -> None:
        self.staged = None

    def end_session(self) -> None:
        self.staged = None

    def with_transaction(self, callback: Callable[[FakeSession], Any], **options: Any) -> Any:
        self.staged = []
        try:
            result = callback(self)
            with self._server.lock:
                for write in self.staged:
                    write()
            return result
        finally:
            self.staged = None


def staged_writes(session: Any) -> list[Callable[[], None]] | None:
    return session.staged if isinstance(session, FakeSession) else None
