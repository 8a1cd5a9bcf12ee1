"""The wire itself: a TCP listener that reads MongoDB messages (OP_MSG, and the
OP_QUERY of pymongo's first handshake) with mockupdb's codec and hands each to
the server, one thread per connection, as mongod serves them.

mockupdb's own ``MockupDB`` serves every connection under one lock, so an
awaiting ``getMore`` would hold up every other connection; only its message
classes are used here."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable

from mockupdb import Request, mock_server_receive_request


class Listener:
    """Accepts connections on a free local port and answers each request with
    ``answer``, which replies on the request itself, or returns False to hang
    up without a reply (a connection closed mid-command)."""

    def __init__(self, answer: Callable[[Request], bool]) -> None:
        self._answer = answer
        self._socket = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._socket.getsockname()[1]
        self._connections: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopped = False
        self._thread = threading.Thread(target=self._accept, name="wire-mongo-accept", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _accept(self) -> None:
        while not self._stopped:
            try:
                connection, _ = self._socket.accept()
            except OSError:
                return  # closed by stop()
            with self._lock:
                if self._stopped:
                    connection.close()
                    return
                self._connections.add(connection)
            threading.Thread(target=self._serve, args=(connection,), daemon=True).start()

    def _serve(self, connection: socket.socket) -> None:
        try:
            while not self._stopped:
                request = mock_server_receive_request(connection, None)
                if not self._answer(request):
                    return
        except OSError:
            pass  # the client hung up, or the test dropped the connection
        finally:
            self._forget(connection)

    def _forget(self, connection: socket.socket) -> None:
        with self._lock:
            self._connections.discard(connection)
        with contextlib.suppress(OSError):
            connection.close()

    def drop_connections(self) -> None:
        """Close every open connection, as a server that steps down or crashes does."""
        with self._lock:
            connections = list(self._connections)
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        self._stopped = True
        with contextlib.suppress(OSError):
            self._socket.shutdown(socket.SHUT_RDWR)
        self._socket.close()
        self.drop_connections()
        self._thread.join(timeout=10)
