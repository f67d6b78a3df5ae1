"""A TCP proxy on loopback that can black-hole traffic, as `iptables -j DROP` does.

While blocked, connections are accepted but nothing is forwarded or answered, so a client sees
what a dropped network looks like: requests that time out, not a refused connection. Blocking
also cuts the connections already open (their packets would be dropped too).
"""

from __future__ import annotations

import socket
import threading


class BlackholeProxy:
    """Forwards 127.0.0.1:`port` to `target_port` until `block()`; `unblock()` restores it."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.blocked = threading.Event()
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port = self._listener.getsockname()[1]
        self._open: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def block(self) -> None:
        self.blocked.set()
        with self._lock:
            sockets, self._open = list(self._open), set()
        for sock in sockets:
            _close(sock)

    def unblock(self) -> None:
        self.blocked.clear()

    def close(self) -> None:
        self._closed = True
        _close(self._listener)
        self.block()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            if self.blocked.is_set():
                # Swallow: keep the connection open and never answer (the client times out).
                threading.Thread(target=_drain, args=(client, self.blocked), daemon=True).start()
                continue
            try:
                upstream = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                _close(client)
                continue
            with self._lock:
                self._open.update((client, upstream))
            threading.Thread(target=_pipe, args=(client, upstream), daemon=True).start()
            threading.Thread(target=_pipe, args=(upstream, client), daemon=True).start()


def _pipe(source: socket.socket, sink: socket.socket) -> None:
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        _close(source)
        _close(sink)


def _drain(sock: socket.socket, blocked: threading.Event) -> None:
    sock.settimeout(0.5)
    try:
        while blocked.is_set():
            try:
                if not sock.recv(65536):
                    break
            except TimeoutError:
                continue
    except OSError:
        pass
    finally:
        _close(sock)


def _close(sock: socket.socket) -> None:
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()
