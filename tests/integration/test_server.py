"""A real server on loopback: real sockets, real Maildir, real SQLite."""

from __future__ import annotations

import asyncio
import logging
import os
import poplib
import re
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mailslot.config import Settings
from mailslot.server.app import open_store, open_user_db
from tests.helpers.server import ThreadServer, add_user, deliver, make_settings, running

PASSWORD = "correct horse"


def recv_until(sock: socket.socket, end: bytes, limit: int = 1 << 26) -> bytes:
    data = b""
    while not data.endswith(end):
        chunk = sock.recv(1 << 16)
        if not chunk:
            break
        data += chunk
        assert len(data) < limit
    return data


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
    add_user(s, "alice@example.org", PASSWORD)
    add_user(s, "bob", PASSWORD)
    return s


@pytest.fixture
def server(settings: Settings) -> Iterator[ThreadServer]:
    with running(settings) as srv:
        yield srv


def login(srv: ThreadServer, user: str = "alice@example.org") -> poplib.POP3:
    client = poplib.POP3(*srv.address, timeout=30)
    client.user(user)
    client.pass_(PASSWORD)
    return client


def test_rfc1939_session_over_the_wire(settings: Settings, server: ThreadServer) -> None:
    one = b"Subject: one\r\n\r\n" + b"a" * 100 + b"\r\n"
    two = b"Subject: two\r\n\r\n" + b"b" * 180 + b"\r\n"
    deliver(settings, "alice@example.org", one)
    deliver(settings, "alice@example.org", two)
    client = poplib.POP3(*server.address, timeout=30)
    assert client.getwelcome() == b"+OK mailslot ready."
    assert client.user("alice@example.org") == b"+OK"
    assert client.pass_(PASSWORD) == b"+OK Maildrop has 2 messages (%d octets)" % (
        len(one) + len(two)
    )
    assert client.stat() == (2, len(one) + len(two))
    assert client.list()[1] == [b"1 %d" % len(one), b"2 %d" % len(two)]
    response, lines, _octets = client.retr(1)
    assert response == b"+OK %d octets" % len(one)
    assert b"\r\n".join(lines) + b"\r\n" == one
    assert client.dele(1) == b"+OK Message 1 deleted"
    client.retr(2)
    client.dele(2)
    assert client.quit() == b"+OK mailslot signing off (maildrop empty)"
    client = login(server)
    assert client.stat() == (0, 0)
    client.quit()


def test_sdps_and_virtual_domain_logins_reach_one_maildrop(
    settings: Settings, server: ThreadServer
) -> None:
    deliver(settings, "alice@example.org", b"Subject: x\r\n\r\nx\r\n")
    uids = []
    for name in ("alice@example.org", "alice+example.org", "ALICE@Example.Org"):
        client = login(server, name)
        uids.append(client.uidl()[1])
        client.quit()
    assert uids[0] == uids[1] == uids[2] and len(uids[0]) == 1


def test_wrong_user_and_wrong_password_look_the_same(server: ThreadServer) -> None:
    replies = []
    for user, password in (("nobody@example.org", PASSWORD), ("alice@example.org", "wrong")):
        client = poplib.POP3(*server.address, timeout=30)
        assert client.user(user) == b"+OK"
        with pytest.raises(poplib.error_proto) as exc:
            client.pass_(password)
        replies.append(exc.value.args[0])
        client.quit()
    assert replies[0] == replies[1] == b"-ERR [AUTH] Authentication failed"


def test_pipelining_in_one_packet(settings: Settings, server: ThreadServer) -> None:
    for n in range(3):
        deliver(settings, "bob", b"Subject: %d\r\n\r\nbody\r\n" % n)
    script = (
        b"CAPA\r\nUSER bob\r\nPASS " + PASSWORD.encode() + b"\r\nSTAT\r\nLIST\r\nUIDL\r\n"
        b"RETR 1\r\nRETR 2\r\nRETR 3\r\nTOP 1 0\r\nDELE 2\r\nSTAT\r\nNOOP\r\nRSET\r\nQUIT\r\n"
    )
    with server.connect() as sock:
        recv_until(sock, b"\r\n")
        sock.sendall(script)
        data = recv_until(sock, b"signing off (3 messages left)\r\n")
    assert data.count(b"+OK") == 15
    assert b"-ERR" not in data
    assert data.index(b"+OK 3 ") < data.index(b"+OK Message 2 deleted") < data.index(b"+OK 2 ")


def test_second_session_gets_in_use(server: ThreadServer) -> None:
    first = login(server)
    second = poplib.POP3(*server.address, timeout=30)
    second.user("alice@example.org")
    with pytest.raises(poplib.error_proto) as exc:
        second.pass_(PASSWORD)
    assert exc.value.args[0] == b"-ERR [IN-USE] Maildrop is locked by another session"
    first.quit()
    # The lock is released at session end: the same connection may retry.
    second.user("alice@example.org")
    assert second.pass_(PASSWORD).startswith(b"+OK Maildrop has")
    second.quit()


def test_in_use_is_not_shown_for_a_wrong_password(server: ThreadServer) -> None:
    first = login(server)
    second = poplib.POP3(*server.address, timeout=30)
    second.user("alice@example.org")
    with pytest.raises(poplib.error_proto) as exc:
        second.pass_("wrong")
    assert exc.value.args[0] == b"-ERR [AUTH] Authentication failed"
    first.quit()
    second.quit()


def test_drop_without_quit_deletes_nothing(settings: Settings, server: ThreadServer) -> None:
    deliver(settings, "bob", b"Subject: keep me\r\n\r\nx\r\n")
    client = login(server, "bob")
    client.dele(1)
    client.sock.shutdown(socket.SHUT_RDWR)
    client.close()
    deadline = time.monotonic() + 10
    while True:  # the lock is released as soon as the server sees the close
        client = poplib.POP3(*server.address, timeout=30)
        client.user("bob")
        try:
            client.pass_(PASSWORD)
            break
        except poplib.error_proto:
            assert time.monotonic() < deadline
            client.close()
            time.sleep(0.05)
    assert client.stat()[0] == 1
    client.quit()


def test_delivery_during_session_is_seen_by_the_next(
    settings: Settings, server: ThreadServer
) -> None:
    deliver(settings, "bob", b"Subject: 1\r\n\r\nx\r\n")
    client = login(server, "bob")
    deliver(settings, "bob", b"Subject: 2\r\n\r\ny\r\n")
    assert client.stat()[0] == 1
    assert len(client.uidl()[1]) == 1
    client.dele(1)
    client.quit()
    client = login(server, "bob")
    assert client.stat()[0] == 1
    assert b"Subject: 2" in client.retr(1)[1]
    client.quit()


def test_message_removed_by_another_tool_mid_session(
    settings: Settings, server: ThreadServer
) -> None:
    deliver(settings, "bob", b"Subject: 1\r\n\r\nx\r\n")
    deliver(settings, "bob", b"Subject: 2\r\n\r\ny\r\n")
    client = login(server, "bob")
    cur = settings.data_dir / "mail" / "localhost" / "bob" / "Maildir" / "cur"
    first = sorted(cur.iterdir())[0]
    first.unlink()
    with pytest.raises(poplib.error_proto) as exc:
        client.retr(1)
    assert exc.value.args[0] == b"-ERR [SYS/PERM] Message no longer exists"
    assert b"Subject: 2" in client.retr(2)[1][0]
    client.quit()


def test_uidls_are_stable_across_restarts(settings: Settings) -> None:
    for n in range(5):
        deliver(settings, "bob", b"Subject: %d\r\n\r\nx\r\n" % n)
    with running(settings) as srv:
        client = login(srv, "bob")
        before = client.uidl()[1]
        client.quit()
    with running(settings) as srv:
        client = login(srv, "bob")
        assert client.uidl()[1] == before
        for line in before:
            uid = line.split()[1]
            assert 1 <= len(uid) <= 70 and all(0x21 <= c <= 0x7E for c in uid)
        client.quit()


def test_autologout_closes_silently_without_deleting(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", pop3__autologout=1)
    add_user(settings, "bob", PASSWORD)
    deliver(settings, "bob", b"Subject: 1\r\n\r\nx\r\n")
    with running(settings) as srv:
        client = login(srv, "bob")
        client.dele(1)
        time.sleep(1.5)
        assert client.sock.recv(100) == b""  # RFC 1939 §3: no response
        client.close()
        client = login(srv, "bob")
        assert client.stat()[0] == 1
        client.quit()


def test_connection_cap(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", server__max_connections=2)
    with running(settings) as srv:
        a, b = srv.connect(), srv.connect()
        assert recv_until(a, b"\r\n").startswith(b"+OK")
        assert recv_until(b, b"\r\n").startswith(b"+OK")
        with srv.connect() as c:
            assert (
                recv_until(c, b"\r\n")
                == b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
            )
            assert c.recv(10) == b""
        a.close()
        b.close()


def test_bad_commands_end_the_session(server: ThreadServer) -> None:
    with server.connect() as sock:
        recv_until(sock, b"\r\n")
        sock.sendall(b"HELO\r\n" * 25)
        data = recv_until(sock, b"closing connection\r\n")
        assert data.count(b"-ERR Unknown command") == 19
        assert sock.recv(10) == b""


def test_two_hundred_concurrent_sessions(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", server__max_connections_per_ip=1000)
    users = [f"user{n}" for n in range(200)]
    for name in users:
        add_user(settings, name, PASSWORD)
        deliver(settings, name, f"Subject: for {name}\r\n\r\nhello {name}\r\n".encode())

    async def session(address: tuple[str, int], name: str) -> bytes:
        reader, writer = await asyncio.open_connection(*address)
        await reader.readline()
        writer.write(f"USER {name}\r\nPASS {PASSWORD}\r\nRETR 1\r\nQUIT\r\n".encode())
        data = await reader.read()  # until the server closes after QUIT
        writer.close()
        return data

    async def all_sessions(address: tuple[str, int]) -> list[bytes]:
        return await asyncio.gather(*(session(address, name) for name in users))

    with running(settings) as srv:
        results = asyncio.run(all_sessions(srv.address))
    for name, data in zip(users, results, strict=True):
        assert f"hello {name}\r\n.\r\n".encode() in data, data
        assert data.endswith(b"+OK mailslot signing off (1 messages left)\r\n")


def test_sigterm_style_stop_deletes_nothing(settings: Settings) -> None:
    settings = make_settings(settings.data_dir, server__shutdown_grace=0.5)
    deliver(settings, "bob", b"Subject: 1\r\n\r\nx\r\n")
    srv = ThreadServer(settings).start()
    client = login(srv, "bob")
    client.dele(1)
    started = time.monotonic()
    srv.stop()
    assert time.monotonic() - started < 10
    assert client.sock.recv(100) == b""
    client.close()
    with running(settings) as again:
        client = login(again, "bob")
        assert client.stat()[0] == 1
        client.quit()


def test_utf8_login(settings: Settings, server: ThreadServer) -> None:
    add_user(settings, "пользователь@пример.рф", "пароль с пробелом")
    deliver(settings, "пользователь@пример.рф", "Subject: привет\r\n\r\n8-bit тело\r\n".encode())
    client = poplib.POP3(*server.address, timeout=30)
    assert client.utf8() == b"+OK UTF8 enabled"
    client.user("Пользователь@пример.рф")
    client.pass_("пароль с пробелом")
    assert "8-bit тело".encode() in client.retr(1)[1]
    client.quit()


def test_server_never_leaks_file_descriptors(settings: Settings, server: ThreadServer) -> None:
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(20):
        login(server, "bob").quit()
    time.sleep(0.2)
    assert len(os.listdir("/proc/self/fd")) <= before + 2


def test_login_delay_is_enforced_after_the_credentials(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", pop3__login_delay=30)
    add_user(settings, "bob", PASSWORD)
    with running(settings) as srv:
        client = poplib.POP3(*srv.address, timeout=30)
        assert client.capa()["LOGIN-DELAY"] == ["30"]
        client.user("bob")
        client.pass_(PASSWORD)
        client.quit()
        client = poplib.POP3(*srv.address, timeout=30)
        client.user("bob")
        with pytest.raises(poplib.error_proto) as exc:
            client.pass_("wrong")
        assert exc.value.args[0] == b"-ERR [AUTH] Authentication failed"  # no hint
        client.user("bob")
        with pytest.raises(poplib.error_proto) as exc:
            client.pass_(PASSWORD)
        assert exc.value.args[0] == b"-ERR [LOGIN-DELAY] Logged in too recently, try later"
        client.quit()


def test_connections_per_address_are_capped(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", server__max_connections_per_ip=2)
    with running(settings) as srv:
        a, b = srv.connect(), srv.connect()
        recv_until(a, b"\r\n")
        recv_until(b, b"\r\n")
        with srv.connect() as c:
            assert (
                recv_until(c, b"\r\n")
                == b"-ERR [SYS/TEMP] Too many connections from your address\r\n"
            )
        other = socket.create_connection(srv.address, timeout=10, source_address=("127.0.0.2", 0))
        assert recv_until(other, b"\r\n").startswith(b"+OK")
        for sock in (a, b, other):
            sock.close()


def test_one_log_line_per_session(
    settings: Settings, server: ThreadServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="mailslot.pop3")
    message = b"Subject: logged\r\n\r\nx\r\n"
    deliver(settings, "bob", message)
    client = login(server, "bob")
    client.retr(1)
    client.dele(1)
    client.quit()
    time.sleep(0.1)
    lines = [r.getMessage() for r in caplog.records if "session end" in r.getMessage()]
    assert len(lines) == 1
    assert re.fullmatch(
        rf"pop3: session end user=bob@localhost remote=127\.0\.0\.1 reason=quit "
        rf"retr=1/{len(message)} top=0 dele=1/{len(message)} messages=1/{len(message)} "
        r"commands=\d+ bad=0",
        lines[0],
    ), lines[0]


def test_credential_cache_skips_the_hash_but_not_a_wrong_password(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", auth__cache_ttl=60)
    add_user(settings, "bob", PASSWORD)
    with running(settings) as srv:
        login(srv, "bob").quit()
        # Change the password behind the server's back: the cached login
        # still works until it expires, a wrong password never does.
        with open_user_db(settings) as users:
            users.set_password("bob", "new password")
        login(srv, "bob").quit()
        client = poplib.POP3(*srv.address, timeout=30)
        client.user("bob")
        with pytest.raises(poplib.error_proto):
            client.pass_("wrong")
        client.user("bob")
        assert client.pass_("new password").startswith(b"+OK")
        client.quit()


def test_a_client_that_stops_reading_is_cut_off_by_autologout(tmp_path: Path) -> None:
    settings = make_settings(tmp_path / "d", pop3__autologout=1)
    add_user(settings, "bob", PASSWORD)
    deliver(settings, "bob", b"Subject: big\r\n\r\n" + b"z" * (16 << 20) + b"\r\n")
    with running(settings) as srv:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.settimeout(30)
        sock.connect(srv.address)
        recv_until(sock, b"\r\n")
        sock.sendall(f"USER bob\r\nPASS {PASSWORD}\r\nRETR 1\r\n".encode())
        time.sleep(3.5)  # never read: the server's writes stall
        client = poplib.POP3(*srv.address, timeout=30)
        client.user("bob")
        assert client.pass_(PASSWORD).startswith(b"+OK")  # the lock was released
        client.quit()
        sock.close()


def test_reconnect_right_after_a_first_session_is_never_in_use(
    settings: Settings, server: ThreadServer
) -> None:
    """The first session of a maildrop writes its uid list after QUIT; a
    client that logs in again at once waits for that, it is not refused."""
    deliver(settings, "bob", b"Subject: first\r\n\r\nx\r\n")
    maildir = Path(open_store(settings).maildir_path("bob", settings.default_domain))
    body = b"Subject: copy\n\nx\n"
    for n in range(20_000):  # a list big enough to take a while to write
        (maildir / "cur" / f"1700000000.M{n:06d}P1.h,S=18,W=21:2,").write_bytes(body)
    for _round in range(5):
        (maildir / "mailslot-uidlist").unlink(missing_ok=True)
        first = login(server, "bob")
        uids = first.uidl()[1]
        first.quit()
        again = login(server, "bob")
        assert again.uidl()[1] == uids
        again.quit()


def test_shutdown_while_a_maildrop_opens_leaves_it_unlocked_and_listed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """SIGTERM in the middle of a login: the open finishes after its session
    was cancelled, and the maildrop is closed then, its first uid list
    written off the event loop before the server exits."""
    caplog.set_level(logging.WARNING)
    settings = make_settings(tmp_path / "d", server__shutdown_grace=0)
    add_user(settings, "bob", PASSWORD)
    maildir = Path(open_store(settings).maildir_path("bob", settings.default_domain))
    for d in ("cur", "new", "tmp"):
        (maildir / d).mkdir(parents=True)
    body = b"Subject: copy\n\nx\n"
    for n in range(20_000):
        (maildir / "cur" / f"1700000000.M{n:06d}P1.h,S=18,W=21:2,").write_bytes(body)
    locks = open_store(settings).locks  # this process's table, the server's too
    with running(settings) as srv, srv.connect() as sock:
        recv_until(sock, b"\r\n")
        sock.sendall(f"USER bob\r\nPASS {PASSWORD}\r\n".encode())
        deadline = time.monotonic() + 30
        while not len(locks) and time.monotonic() < deadline:
            time.sleep(0.001)  # until the open has the lock and lists cur/
        assert len(locks) == 1
        srv.stop()
    assert len(locks) == 0
    assert (maildir / "mailslot-uidlist").exists()
    with running(settings) as srv:  # a new server finds the maildrop free
        client = login(srv, "bob")
        assert client.stat()[0] == 20_000
        client.quit()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
