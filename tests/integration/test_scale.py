"""Large messages, many pipelined commands and large maildrops against a
``mailslot serve`` subprocess, with the server's memory read from /proc.

Timings are printed (run with ``-s`` to see them), never asserted: these
machines are shared and noisy.  Memory bounds are asserted with a wide margin.
"""

from __future__ import annotations

import hashlib
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server import ProcessServer, add_user, deliver, make_settings, write_config

PASSWORD = "scale test"
MiB = 1 << 20


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def server(data_dir: Path) -> Iterator[ProcessServer]:
    config = write_config(data_dir)
    srv = ProcessServer(config)
    try:
        yield srv
    finally:
        srv.stop()


def open_session(srv: ProcessServer, user: str) -> tuple[socket.socket, bytes]:
    sock = socket.create_connection(srv.address, timeout=120)
    data = b""
    sock.sendall(f"USER {user}\r\nPASS {PASSWORD}\r\n".encode())
    while data.count(b"\r\n") < 3:
        data += sock.recv(4096)
    assert data.split(b"\r\n")[2].startswith(b"+OK Maildrop has"), data
    return sock, data


class MultilineReader:
    """Streams a multi-line response, undoing dot-stuffing, hashing the body."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""

    def read_response(self) -> tuple[bytes, str, int]:
        while b"\r\n" not in self.buffer:
            self.buffer += self.sock.recv(MiB)
        first, self.buffer = self.buffer.split(b"\r\n", 1)
        digest = hashlib.sha256()
        octets = 0
        while True:
            lines = self.buffer.split(b"\r\n")
            self.buffer = lines.pop()  # incomplete last line
            for line in lines:
                if line == b".":
                    self.buffer = b"\r\n".join([*lines[lines.index(line) + 1 :], self.buffer])
                    return first, digest.hexdigest(), octets
                if line.startswith(b"."):
                    line = line[1:]
                digest.update(line + b"\r\n")
                octets += len(line) + 2
            chunk = self.sock.recv(MiB)
            assert chunk, "connection closed mid-response"
            self.buffer += chunk


@pytest.mark.slow
def test_50_mib_message_with_bounded_memory(data_dir: Path, server: ProcessServer) -> None:
    settings = make_settings(data_dir)
    add_user(settings, "big", PASSWORD)
    line = b"0123456789" * 7 + b"\n"  # bare LF: normalised on the wire
    body = b".leading dot\n" + line * (50 * MiB // len(line))
    message = b"Subject: fifty MiB\n\n" + body
    deliver(settings, "big", message)
    wire = message.replace(b"\n", b"\r\n")
    expected = hashlib.sha256(wire).hexdigest()

    sock, _ = open_session(server, "big")
    baseline = server.rss_kib()
    started = time.monotonic()
    sock.sendall(b"RETR 1\r\n")
    reader = MultilineReader(sock)
    first, digest, octets = reader.read_response()
    elapsed = time.monotonic() - started
    sock.sendall(b"QUIT\r\n")
    sock.close()
    peak = server.rss_kib("VmHWM")
    print(
        f"\n50 MiB RETR: {len(wire) / MiB:.1f} MiB in {elapsed:.2f} s "
        f"({len(wire) / MiB / elapsed:.0f} MiB/s); server RSS {baseline} KiB -> peak {peak} KiB"
    )
    assert first == b"+OK %d octets" % len(wire)
    assert octets == len(wire)
    assert digest == expected
    assert peak - baseline < 32 * 1024, "server memory grew with the message size"


@pytest.mark.slow
def test_10000_pipelined_retrs_do_not_buffer_output(data_dir: Path, server: ProcessServer) -> None:
    settings = make_settings(data_dir)
    add_user(settings, "pipe", PASSWORD)
    message = b"Subject: pipelined\r\n\r\n" + b"y" * 100 * 1024 + b"\r\n"
    deliver(settings, "pipe", message)
    count = 10_000

    sock, _ = open_session(server, "pipe")
    baseline = server.rss_kib()
    sock.sendall(b"RETR 1\r\n" * count + b"QUIT\r\n")
    time.sleep(1.0)  # a client that does not read: the server must wait, not buffer
    stalled = server.rss_kib()
    reader = MultilineReader(sock)
    for _ in range(count):
        first, _digest, octets = reader.read_response()
        assert first == b"+OK %d octets" % len(message)
        assert octets == len(message)
    while b"\r\n" not in reader.buffer:
        reader.buffer += sock.recv(4096)
    assert reader.buffer.startswith(b"+OK mailslot signing off")
    sock.close()
    peak = server.rss_kib("VmHWM")
    print(f"\n10,000 pipelined RETRs: RSS {baseline} KiB, stalled {stalled} KiB, peak {peak} KiB")
    assert peak - baseline < 32 * 1024, "server buffered pipelined output"


def make_large_maildrop(maildir: Path, count: int) -> int:
    """``count`` small messages named the way Dovecot and mailslot name them
    (``,S=``/``,W=`` sizes), written straight into cur/."""
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True, exist_ok=True)
    cur = maildir / "cur"
    total = 0
    base = int(time.time()) - count
    for n in range(count):
        body = b"Subject: message %d\n\nbody\n" % n
        wire = len(body) + body.count(b"\n")
        name = f"{base + n}.M{n}P1Q1.example,S={len(body)},W={wire}:2,S"
        fd = os.open(cur / name, os.O_WRONLY | os.O_CREAT, 0o600)
        os.write(fd, body)
        os.close(fd)
        total += wire
    return total


@pytest.mark.slow
def test_100k_message_maildrop(data_dir: Path, server: ProcessServer) -> None:
    settings = make_settings(data_dir)
    add_user(settings, "many", PASSWORD)
    maildir = data_dir / "mail" / "localhost" / "many" / "Maildir"
    total = make_large_maildrop(maildir, 100_000)
    timings = []
    for attempt in ("first", "second"):
        started = time.monotonic()
        sock, _ = open_session(server, "many")
        sock.sendall(b"STAT\r\n")
        data = b""
        while not data.endswith(b"\r\n"):
            data += sock.recv(4096)
        timings.append(time.monotonic() - started)
        assert data == b"+OK 100000 %d\r\n" % total, attempt
        sock.sendall(b"UIDL 100000\r\nQUIT\r\n")
        while b"signing off" not in data:
            data += sock.recv(4096)
        sock.close()
    print(
        f"\n100,000-message maildrop: login+STAT {timings[0] * 1000:.0f} ms "
        f"(first, builds the uid index), {timings[1] * 1000:.0f} ms (second)"
    )
