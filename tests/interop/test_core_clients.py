"""Real clients fetch mail delivered by ``mailslot deliver``: Python's poplib
and curl, against a ``mailslot serve`` subprocess.  Content is compared byte
for byte after line-end normalisation (the wire always uses CRLF)."""

from __future__ import annotations

import poplib
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.clients import require_binary
from tests.helpers.server import ProcessServer, cli, write_config

pytestmark = pytest.mark.interop

PASSWORD = "interop pass"
MESSAGES = [
    b"From: a@example.org\r\nSubject: plain\r\n\r\nHello.\r\n",
    b"From: b@example.org\nSubject: bare LF\n\n.leading dot\n.\n..two dots\nend\n",
    b"From: c@example.org\r\nSubject: 8-bit\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
    + "Привет, мир — 8-bit body\r\n".encode(),
    b"From: d@example.org\r\nSubject: no final newline\r\n\r\nlast line",
    b"From: e@example.org\r\nSubject: empty body\r\n\r\n",
    b"Subject: long line\r\n\r\n" + b"x" * 100_000 + b"\r\n",
]


def on_the_wire(message: bytes) -> bytes:
    data = message.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    return data if data.endswith(b"\r\n") else data + b"\r\n"


@pytest.fixture
def config(tmp_path: Path) -> Path:
    config = write_config(tmp_path / "data")
    result = cli(
        "user",
        "add",
        "-c",
        str(config),
        "carol",
        "--password-stdin",
        stdin=PASSWORD.encode() + b"\n",
    )
    assert result.returncode == 0, result.stderr
    for message in MESSAGES:
        result = cli("deliver", "-c", str(config), "carol", stdin=message)
        assert result.returncode == 0, result.stderr
    return config


@pytest.fixture
def server(config: Path) -> Iterator[ProcessServer]:
    srv = ProcessServer(config)
    try:
        yield srv
    finally:
        srv.stop()


def test_poplib_fetches_and_deletes(server: ProcessServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(poplib, "_MAXLINE", 1 << 20)  # poplib's own limit is 2048
    client = poplib.POP3(*server.address, timeout=30)
    client.user("carol")
    client.pass_(PASSWORD)
    count, size = client.stat()
    assert count == len(MESSAGES)
    assert size == sum(len(on_the_wire(m)) for m in MESSAGES)
    for number, message in enumerate(MESSAGES, start=1):
        _response, lines, _octets = client.retr(number)
        assert b"".join(line + b"\r\n" for line in lines) == on_the_wire(message)
        client.dele(number)
    client.quit()
    client = poplib.POP3(*server.address, timeout=30)
    client.user("carol")
    client.pass_(PASSWORD)
    assert client.stat() == (0, 0)
    client.quit()


def test_curl_fetches_lists_and_deletes(server: ProcessServer) -> None:
    curl = require_binary("curl")
    host, port = server.address
    base = f"pop3://{host}:{port}"
    auth = ["-u", f"carol:{PASSWORD}"]

    def run(*args: str) -> bytes:
        result = subprocess.run([curl, "-sS", *auth, *args], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        return result.stdout

    listing = run(base + "/")
    assert listing.splitlines() == [
        b"%d %d" % (n, len(on_the_wire(m))) for n, m in enumerate(MESSAGES, start=1)
    ]
    for number, message in enumerate(MESSAGES, start=1):
        assert run(f"{base}/{number}") == on_the_wire(message)
    run(f"{base}/1", "-X", "DELE", "-I")
    assert len(run(base + "/").splitlines()) == len(MESSAGES) - 1
