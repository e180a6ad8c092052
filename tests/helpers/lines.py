"""Line-at-a-time POP3 conversations over a real socket (plain or TLS), for
tests that speak the protocol by hand."""

from __future__ import annotations

import socket
import ssl


def recv_line(sock: socket.socket | ssl.SSLSocket) -> bytes:
    """One CRLF-terminated line, read octet by octet (nothing past it)."""
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


class LineClient:
    """Send a line, read the answer line (CRLF stripped)."""

    def __init__(self, sock: socket.socket | ssl.SSLSocket) -> None:
        self.sock = sock
        self.file = sock.makefile("rb")

    def line(self) -> bytes:
        return self.file.readline().rstrip(b"\r\n")

    def send(self, data: bytes) -> bytes:
        self.sock.sendall(data + b"\r\n")
        return self.line()

    def close(self) -> None:
        self.send(b"QUIT")
        self.file.close()
        self.sock.close()
