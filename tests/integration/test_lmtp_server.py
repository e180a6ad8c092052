"""A real LMTP listener on loopback and on a unix socket: real sockets, real
Maildir, real SQLite user database; smtplib.LMTP and raw sockets as clients."""

from __future__ import annotations

import errno
import io
import logging
import smtplib
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from mailslot.auth import Account
from mailslot.config import Settings
from mailslot.delivery.lmtp import LmtpSessionOptions
from mailslot.server.lmtp import LmtpOptions
from mailslot.store import DeliveryError
from tests.helpers.lmtp import (
    LmtpThreadServer,
    add_users,
    maildir_files,
    open_maildir_store,
    running_lmtp,
)
from tests.helpers.server import make_settings

PASSWORD = "correct horse"
SENDER = "sender@remote.test"
MESSAGE = b"From: sender@remote.test\r\nSubject: hello\r\n\r\nHello, Alice.\r\n.leading dot\r\n"


def headers(recipient: str, sender: str = SENDER) -> bytes:
    return f"Return-Path: <{sender}>\r\nDelivered-To: {recipient}\r\n".encode()


def recv_lines(sock: socket.socket, count: int) -> list[bytes]:
    """Read until ``count`` CRLF-terminated lines have arrived."""
    data = b""
    while data.count(b"\r\n") < count:
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
    return data.split(b"\r\n")[:count]


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    s = make_settings(tmp_path / "data")
    add_users(s, PASSWORD, "alice@example.org", "bob@example.org", "carol")  # carol@localhost
    return s


@pytest.fixture
def server(settings: Settings) -> Iterator[LmtpThreadServer]:
    with running_lmtp(settings) as srv:
        yield srv


def lmtp_client(srv: LmtpThreadServer) -> smtplib.LMTP:
    return smtplib.LMTP(*srv.address, timeout=30)


def stored(settings: Settings, account: str) -> list[bytes]:
    return [path.read_bytes() for path in maildir_files(settings, account)]


def test_delivery_lands_in_new_with_trace_headers(
    settings: Settings, server: LmtpThreadServer
) -> None:
    with lmtp_client(server) as client:
        assert client.sendmail(SENDER, ["alice@example.org"], MESSAGE) == {}
    [data] = stored(settings, "alice@example.org")
    assert data == headers("alice@example.org") + MESSAGE
    assert maildir_files(settings, "alice@example.org", "tmp") == []


def test_greeting_and_lhlo(server: LmtpThreadServer) -> None:
    with socket.create_connection(server.address, timeout=30) as sock:
        assert recv_lines(sock, 1) == [b"220 test.invalid LMTP mailslot ready"]
        sock.sendall(b"LHLO client.test\r\n")
        assert recv_lines(sock, 5) == [
            b"250-test.invalid",
            b"250-PIPELINING",
            b"250-ENHANCEDSTATUSCODES",
            b"250-8BITMIME",
            b"250 SIZE 52428800",
        ]


def test_one_reply_per_recipient_after_data(settings: Settings, server: LmtpThreadServer) -> None:
    with lmtp_client(server) as client:
        client.ehlo("client.test")  # LHLO
        assert client.mail(SENDER) == (250, b"2.1.0 Sender OK")
        assert client.rcpt("alice@example.org") == (250, b"2.1.5 Recipient OK")
        assert client.rcpt("nobody@example.org") == (550, b"5.1.1 User unknown")
        assert client.rcpt("Carol") == (250, b"2.1.5 Recipient OK")
        # smtplib reads one reply after DATA; LMTP sends one per recipient.
        assert client.data(MESSAGE) == (250, b"2.0.0 Delivered")
        assert client.getreply() == (250, b"2.0.0 Delivered")
        assert client.noop() == (250, b"2.0.0 OK")
    assert stored(settings, "alice@example.org") == [headers("alice@example.org") + MESSAGE]
    assert stored(settings, "carol") == [headers("Carol") + MESSAGE]


def test_unknown_and_invalid_recipients_are_550(server: LmtpThreadServer) -> None:
    with lmtp_client(server) as client:
        client.ehlo("client.test")
        client.mail(SENDER)
        assert client.rcpt("nobody@example.org") == (550, b"5.1.1 User unknown")
        assert client.rcpt("../../etc@example.org") == (550, b"5.1.1 User unknown")
        assert client.rcpt("alice@") == (550, b"5.1.1 User unknown")
        assert client.rcpt("postmaster") == (550, b"5.1.1 User unknown")
        with pytest.raises(smtplib.SMTPDataError) as info:
            client.data(MESSAGE)
        assert info.value.smtp_code == 503


def test_unix_socket(settings: Settings, tmp_path: Path) -> None:
    path = tmp_path / "lmtp.sock"
    short_dir = None
    if len(str(path)) > 100:  # sun_path is 108 octets
        short_dir = tempfile.TemporaryDirectory()
        path = Path(short_dir.name) / "lmtp.sock"
    try:
        with running_lmtp(settings, unix_path=path) as srv:
            assert path.is_socket()
            assert path.stat().st_mode & 0o777 == 0o660
            with smtplib.LMTP(str(path), timeout=30) as client:
                assert client.sendmail("", ["bob@example.org"], MESSAGE) == {}
            srv.wait_idle()
        assert not path.exists()  # removed at shutdown
    finally:
        if short_dir is not None:
            short_dir.cleanup()
    assert stored(settings, "bob@example.org") == [headers("bob@example.org", "") + MESSAGE]


def test_stale_unix_socket_is_replaced(settings: Settings, tmp_path: Path) -> None:
    path = Path(tempfile.mkdtemp(dir="/tmp")) / "s"
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(path))
    stale.close()
    with running_lmtp(settings, unix_path=path), smtplib.LMTP(str(path), timeout=30) as client:
        assert client.noop()[0] == 250
    path.parent.rmdir()


def test_pipelined_transaction_over_raw_socket(
    settings: Settings, server: LmtpThreadServer
) -> None:
    with socket.create_connection(server.address, timeout=30) as sock:
        recv_lines(sock, 1)
        sock.sendall(
            b"LHLO client.test\r\nMAIL FROM:<sender@remote.test>\r\n"
            b"RCPT TO:<alice@example.org>\r\nRCPT TO:<nobody@example.org>\r\n"
            b"RCPT TO:<bob@example.org>\r\nDATA\r\n"
        )
        lines = recv_lines(sock, 5 + 5)
        assert lines[5:] == [
            b"250 2.1.0 Sender OK",
            b"250 2.1.5 Recipient OK",
            b"550 5.1.1 User unknown",
            b"250 2.1.5 Recipient OK",
            b"354 Start mail input; end with <CRLF>.<CRLF>",
        ]
        sock.sendall(b"Subject: x\r\n\r\n..one\r\n.\r\nQUIT\r\n")
        assert recv_lines(sock, 3) == [
            b"250 2.0.0 Delivered",
            b"250 2.0.0 Delivered",
            b"221 2.0.0 Bye",
        ]
    body = b"Subject: x\r\n\r\n.one\r\n"
    assert stored(settings, "alice@example.org") == [headers("alice@example.org") + body]
    assert stored(settings, "bob@example.org") == [headers("bob@example.org") + body]


def test_bare_lf_message_gets_bare_lf_headers(settings: Settings, server: LmtpThreadServer) -> None:
    with socket.create_connection(server.address, timeout=30) as sock:
        sock.sendall(b"LHLO c\nMAIL FROM:<a@b.test>\nRCPT TO:<alice@example.org>\nDATA\n")
        assert recv_lines(sock, 9)[-1].startswith(b"354")
        sock.sendall(b"Subject: lf\n\nbody\n.\n")
        assert recv_lines(sock, 1) == [b"250 2.0.0 Delivered"]
    assert stored(settings, "alice@example.org") == [
        b"Return-Path: <a@b.test>\nDelivered-To: alice@example.org\nSubject: lf\n\nbody\n"
    ]


def test_connection_dropped_mid_data_delivers_nothing(
    settings: Settings, server: LmtpThreadServer
) -> None:
    with socket.create_connection(server.address, timeout=30) as sock:
        sock.sendall(b"LHLO c\r\nMAIL FROM:<>\r\nRCPT TO:<alice@example.org>\r\nDATA\r\n")
        assert recv_lines(sock, 9)[-1].startswith(b"354")
        sock.sendall(b"Subject: half\r\n\r\n" + b"x" * 200_000)
    server.wait_idle()
    assert maildir_files(settings, "alice@example.org") == []
    assert maildir_files(settings, "alice@example.org", "tmp") == []


def test_ten_mib_message_with_long_lines(settings: Settings, server: LmtpThreadServer) -> None:
    line = b"y" * 100_000 + b"\r\n"
    body = b"Subject: big\r\n\r\n" + b".starts with a dot\r\n" + line * 105
    assert len(body) > 10 * 1024 * 1024
    with lmtp_client(server) as client:
        assert client.sendmail(SENDER, ["bob@example.org"], body) == {}
    [data] = stored(settings, "bob@example.org")
    assert data == headers("bob@example.org") + body


def test_message_over_size_limit_is_refused_for_every_recipient(settings: Settings) -> None:
    options = LmtpOptions(session=LmtpSessionOptions(hostname="mx.test", max_message_size=1000))
    with running_lmtp(settings, options=options) as srv, lmtp_client(srv) as client:
        client.ehlo("c")
        client.mail(SENDER)
        client.rcpt("alice@example.org")
        client.rcpt("bob@example.org")
        too_big = (552, b"5.3.4 Message size exceeds fixed maximum message size")
        assert client.data(b"z" * 2000 + b"\r\n") == too_big
        assert client.getreply() == too_big
        assert client.noop()[0] == 250
    assert maildir_files(settings, "alice@example.org") == []


def test_over_quota_at_rcpt(settings: Settings) -> None:
    open_maildir_store(settings).deliver(
        "alice", "example.org", io.BytesIO(b"Subject: old\r\n\r\n")
    )

    def quota(account: Account) -> tuple[int | None, int | None]:
        return (1, None) if account.name == "alice@example.org" else (None, None)

    with running_lmtp(settings, quota=quota) as srv, lmtp_client(srv) as client:
        client.ehlo("c")
        client.mail(SENDER)
        assert client.rcpt("alice@example.org") == (452, b"4.2.2 Mailbox full")
        assert client.rcpt("bob@example.org") == (250, b"2.1.5 Recipient OK")
    assert len(maildir_files(settings, "alice@example.org")) == 1


def test_over_quota_at_delivery(settings: Settings) -> None:
    def quota(account: Account) -> tuple[int | None, int | None]:
        return (None, 1000)

    with running_lmtp(settings, quota=quota) as srv, lmtp_client(srv) as client:
        client.ehlo("c")
        client.mail(SENDER)
        assert client.rcpt("alice@example.org")[0] == 250
        big = b"Subject: big\r\n\r\n" + b"q" * 2000 + b"\r\n"
        assert client.data(big) == (452, b"4.2.2 Mailbox full")
        # A small one still fits.
        assert client.sendmail(SENDER, ["alice@example.org"], MESSAGE) == {}
    assert stored(settings, "alice@example.org") == [headers("alice@example.org") + MESSAGE]


def test_declared_size_over_quota_is_refused_at_rcpt(settings: Settings) -> None:
    def quota(account: Account) -> tuple[int | None, int | None]:
        return (None, 1000)

    with running_lmtp(settings, quota=quota) as srv, lmtp_client(srv) as client:
        client.ehlo("c")
        client.mail(SENDER, ["SIZE=5000"])
        assert client.rcpt("alice@example.org") == (452, b"4.2.2 Mailbox full")


def test_one_log_line_per_delivered_message(
    settings: Settings, server: LmtpThreadServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot.lmtp")
    sender = '"odd name\\"\u2028"@x.test'  # a space, a quoted quote, LINE SEPARATOR
    with socket.create_connection(server.address, timeout=30) as sock:
        sock.sendall(
            b"LHLO c\r\nMAIL FROM:<" + sender.encode() + b">\r\n"
            b"RCPT TO:<alice@example.org>\r\nDATA\r\n"
            + MESSAGE.replace(b"\r\n.", b"\r\n..")
            + b".\r\nQUIT\r\n"
        )
        assert recv_lines(sock, 11)[-2:] == [b"250 2.0.0 Delivered", b"221 2.0.0 Bye"]
    server.wait_idle()
    lines = [r.getMessage() for r in caplog.records if " delivered " in r.getMessage()]
    assert len(lines) == 1
    [line] = lines
    size = len(headers("alice@example.org", sender) + MESSAGE)
    assert line.startswith('lmtp: delivered from=<"odd\\x20name\\\\"\\u2028"@x.test> ')
    assert f" to=<alice@example.org> size={size} file=" in line
    assert line.isprintable()
    [path] = maildir_files(settings, "alice@example.org")
    assert line.endswith("file=" + path.name)


def test_idle_timeout(settings: Settings) -> None:
    options = LmtpOptions(idle_timeout=0.2)
    with (
        running_lmtp(settings, options=options) as srv,
        socket.create_connection(srv.address, timeout=30) as sock,
    ):
        assert recv_lines(sock, 2)[1] == b"421 4.4.2 Idle timeout, closing connection"
        assert sock.recv(10) == b""


class FailingStore:
    """Delivers to the real store, except for users named in ``failures``."""

    def __init__(self, settings: Settings, failures: dict[str, BaseException]) -> None:
        self._store = open_maildir_store(settings)
        self._failures = failures

    def deliver(self, user: str, domain: str, message: BinaryIO) -> str:
        data = message.read()  # as a real store would, before failing
        if user in self._failures:
            raise self._failures[user]
        return self._store.deliver(user, domain, io.BytesIO(data))

    def usage(self, user: str, domain: str) -> tuple[int, int]:
        return self._store.usage(user, domain)


def _disk_full() -> DeliveryError:
    try:
        raise OSError(errno.ENOSPC, "No space left on device")
    except OSError as exc:
        error = DeliveryError("cannot deliver", temporary=True)
        error.__cause__ = exc
        return error


def test_failed_deliveries_are_never_250(settings: Settings) -> None:
    add_users(settings, PASSWORD, "dave@example.org", "erin@example.org")
    store = FailingStore(
        settings,
        {
            "alice": _disk_full(),
            "bob": DeliveryError("I/O error", temporary=True),
            "dave": DeliveryError("bad name", temporary=False),
            "erin": RuntimeError("bug"),
        },
    )
    recipients = ["alice", "bob", "carol", "dave", "erin"]
    with running_lmtp(settings, store=store) as srv, lmtp_client(srv) as client:
        client.ehlo("c")
        client.mail(SENDER)
        for name in recipients:
            address = name if name == "carol" else f"{name}@example.org"
            assert client.rcpt(address)[0] == 250
        replies = [client.data(MESSAGE)] + [client.getreply() for _ in recipients[1:]]
    assert replies == [
        (452, b"4.3.1 Insufficient system storage"),
        (451, b"4.3.0 Temporary failure, try again later"),
        (250, b"2.0.0 Delivered"),
        (550, b"5.2.0 Mailbox unavailable"),
        (451, b"4.3.0 Temporary failure, try again later"),
    ]
    assert maildir_files(settings, "alice@example.org") == []
    assert stored(settings, "carol") == [headers("carol") + MESSAGE]
