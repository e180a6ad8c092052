"""What an attacker would try: log injection, resource exhaustion before
login, malformed SASL, and the fail2ban contract."""

from __future__ import annotations

import base64
import logging
import re
import socket
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.server import ProcessServer, add_user, make_settings, running, write_config

README = Path(__file__).resolve().parents[2] / "README.md"


def recv_count(sock: socket.socket, marker: bytes, count: int) -> bytes:
    data = b""
    while data.count(marker) < count:
        chunk = sock.recv(1 << 16)
        assert chunk, "closed early"
        data += chunk
    return data


def test_fail2ban_regex_from_readme_matches_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    match = re.search(r"^failregex = (.+)$", README.read_text(), re.MULTILINE)
    assert match, "README documents no failregex"
    regex = re.compile(match.group(1).strip().replace("<HOST>", r"(?P<host>\S+)"))
    settings = make_settings(tmp_path / "d", auth__penalty_max_delay=0)
    add_user(settings, "alice", "right")
    caplog.set_level(logging.INFO, logger="mailslot")
    with running(settings) as srv, socket.create_connection(srv.address, timeout=10) as sock:
        sock.recv(100)
        sock.sendall(b"USER alice\r\nPASS wrong password\r\nUSER nobody\r\nPASS x\r\nQUIT\r\n")
        recv_count(sock, b"\r\n", 5)
    time.sleep(0.1)
    lines = [
        f"2026-01-01 00:00:00,000 {r.levelname} {r.name}: {r.getMessage()}" for r in caplog.records
    ]
    hits = [m.group("host") for line in lines if (m := regex.search(line))]
    assert hits == ["127.0.0.1", "127.0.0.1"]
    assert not any("wrong password" in line for line in lines)


def test_control_characters_in_user_names_are_escaped_in_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = make_settings(tmp_path / "d", auth__penalty_max_delay=0)
    caplog.set_level(logging.INFO, logger="mailslot")
    with running(settings) as srv, socket.create_connection(srv.address, timeout=10) as sock:
        sock.recv(100)
        sock.sendall(b"USER evil\x1b[31m\x07forged=1\x7f\r\nPASS x\r\nQUIT\r\n")
        recv_count(sock, b"\r\n", 3)
    time.sleep(0.1)
    messages = [r.getMessage() for r in caplog.records if "auth failed" in r.getMessage()]
    assert len(messages) == 1
    assert not any(c in messages[0] for c in "\x1b\x07\x7f")
    assert "\\x1b" in messages[0]


def scram_client_first() -> bytes:
    return base64.b64encode(b"n,,n=alice,r=" + b"x" * 24)


@pytest.mark.slow
def test_100k_aborted_sasl_exchanges_keep_memory_flat(tmp_path: Path) -> None:
    config = write_config(tmp_path / "d", pop3__max_auth_failures=1_000_000)
    srv = ProcessServer(config)
    try:
        sock = socket.create_connection(srv.address, timeout=120)
        sock.recv(100)
        first = b"AUTH SCRAM-SHA-256 " + scram_client_first() + b"\r\n*\r\n"
        sock.sendall(first * 1000)
        recv_count(sock, b"-ERR", 1000)
        baseline = srv.rss_kib()
        rest = 99_000  # 100,000 with the warm-up above
        batch = 1000
        marker = b"Authentication cancelled\r\n"
        received = 0

        def reader() -> None:
            nonlocal received
            tail = b""
            while received < rest:
                chunk = sock.recv(1 << 20)
                if not chunk:
                    return
                data = tail + chunk
                received += data.count(marker)
                tail = data[-(len(marker) - 1) :]

        thread = threading.Thread(target=reader)
        thread.start()
        for _ in range(rest // batch):
            sock.sendall(first * batch)
        thread.join(300)
        assert received == rest
        after = srv.rss_kib()
        sock.close()
        print(f"\n100,000 aborted SCRAM exchanges: RSS {baseline} KiB -> {after} KiB")
        assert after - baseline < 8 * 1024
    finally:
        srv.stop()


@pytest.mark.parametrize(
    "mechanism",
    ["PLAIN", "LOGIN", "SCRAM-SHA-1", "SCRAM-SHA-256"],
)
@pytest.mark.parametrize(
    "response",
    [b"", b"\x00", b"garbage", b"n,,", b"\xff\xfe" * 10, b"A" * 6000],
    ids=["empty", "nul", "garbage", "truncated", "not-utf8", "oversized"],
)
def test_malformed_sasl_responses_fail_cleanly(
    tmp_path: Path, mechanism: str, response: bytes
) -> None:
    settings = make_settings(tmp_path / "d", auth__penalty_max_delay=0)
    add_user(settings, "alice", "right")
    with running(settings) as srv, socket.create_connection(srv.address, timeout=10) as sock:
        sock.recv(100)
        sock.sendall(f"AUTH {mechanism}\r\n".encode())
        assert recv_count(sock, b"\r\n", 1).startswith(b"+ ")
        # LOGIN asks twice; answer every challenge with the same bad data.
        reply = b"+ "
        for _ in range(3):
            sock.sendall(base64.b64encode(response) + b"\r\n")
            reply = recv_count(sock, b"\r\n", 1)
            if not reply.startswith(b"+ "):
                break
        assert reply.startswith(b"-ERR [AUTH]"), reply
        sock.sendall(b"CAPA\r\n")
        assert recv_count(sock, b"\r\n.\r\n", 1).startswith(b"+OK")
