"""A raw-socket HTTP host on loopback for tests of clients meeting a broken or hostile server: it reads each
request whole (head and ``Content-Length`` body, so closing never resets the connection) and lets ``answer``
write whatever bytes it likes, a thread per connection."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class RawHost:
    def __init__(self, answer: Callable[[socket.socket], object]) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.answer = answer
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._one, args=(conn,), daemon=True).start()

    def _one(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while b"\r\n\r\n" not in data:
                data += conn.recv(65536)
            head, body = data.split(b"\r\n\r\n", 1)
            length = next((int(line.split(b":")[1]) for line in head.split(b"\r\n")
                           if line.lower().startswith(b"content-length")), 0)
            while len(body) < length:
                body += conn.recv(65536)
            try:
                self.answer(conn)
            except OSError:  # the client hung up: what the test wanted to see
                pass

    def close(self) -> None:
        self.server.close()
