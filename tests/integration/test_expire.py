"""EXPIRE (RFC 2449 §6.7) made true: a real server marks what RETR sent,
``mailslot expire`` removes it after pop3.expire days, and EXPIRE 0 removes
it at QUIT.  Real Maildir, real sockets, the real CLI."""

from __future__ import annotations

import poplib
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.server import ProcessServer, cli, write_config

PASSWORD = "expiring pass"


def messages(n: int) -> list[bytes]:
    return [b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i) for i in range(1, n + 1)]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[str, ProcessServer, Path]]:
    data = tmp_path / "data"
    config = str(write_config(data, pop3__expire=30))
    assert (
        cli(
            "user", "add", "-c", config, "eve", "--password-stdin", stdin=PASSWORD.encode()
        ).returncode
        == 0
    )
    for message in messages(3):
        assert cli("deliver", "-c", config, "eve", stdin=message).returncode == 0
    srv = ProcessServer(Path(config))
    try:
        yield config, srv, data / "mail" / "localhost" / "eve" / "Maildir" / "cur"
    finally:
        srv.stop()


def login(srv: ProcessServer) -> poplib.POP3:
    client = poplib.POP3(*srv.address, timeout=30)
    client.user("eve")
    client.pass_(PASSWORD)
    return client


def test_retrieved_mail_expires_after_the_days(setup: tuple[str, ProcessServer, Path]) -> None:
    config, srv, cur = setup
    client = login(srv)
    assert client.capa()["EXPIRE"] == ["30"]
    uids = dict(line.split() for line in client.uidl()[1])
    client.retr(1)
    client.retr(2)
    client.top(3, 0)  # not a retrieval
    client.quit()
    seen = sorted(p.name for p in cur.iterdir() if p.name.endswith(",S"))
    assert len(seen) == 2  # the Maildir "seen" flag, as Dovecot sets it

    young = cli("expire", "-c", config)  # pop3.expire = 30 days: nothing is that old
    assert young.returncode == 0 and young.stdout == b"", young.stderr
    dry = cli("expire", "-c", config, "--days", "0", "--dry-run")
    assert dry.returncode == 0
    assert dry.stdout == b"eve@localhost: would remove 2 messages (%d octets)\n" % sum(
        len(m) for m in messages(2)
    )
    assert len(list(cur.iterdir())) == 3
    done = cli("expire", "-c", config, "--days", "0", "eve")
    assert done.returncode == 0 and b"eve@localhost: removed 2 messages" in done.stdout

    client = login(srv)
    assert client.stat() == (1, len(messages(3)[2]))
    assert [line.split()[1] for line in client.uidl()[1]] == [uids[b"3"]]  # UIDL kept
    client.quit()


def test_a_maildrop_in_use_is_skipped(setup: tuple[str, ProcessServer, Path]) -> None:
    config, srv, _ = setup
    client = login(srv)
    client.retr(1)
    client.quit()
    holder = login(srv)
    result = cli("expire", "-c", config, "--days", "0")
    assert result.returncode == 0
    assert result.stdout == b"eve@localhost: in use, skipped (run again later)\n"
    holder.quit()
    assert b"removed 1 messages" in cli("expire", "-c", config, "--days", "0").stdout


def test_expire_zero_removes_retrieved_mail_at_quit(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "data", pop3__expire=0))
    cli("user", "add", "-c", config, "eve", "--password-stdin", stdin=PASSWORD.encode())
    for message in messages(3):
        cli("deliver", "-c", config, "eve", stdin=message)
    srv = ProcessServer(Path(config))
    try:
        client = login(srv)
        assert client.capa()["EXPIRE"] == ["0"]
        client.retr(2)
        assert client.quit() == b"+OK mailslot signing off (2 messages left)"
        client = login(srv)
        assert client.stat()[0] == 2
        client.quit()  # nothing retrieved: nothing removed
        client = login(srv)
        assert client.stat()[0] == 2
        client.quit()
    finally:
        srv.stop()


def test_expire_needs_days(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "data"))  # pop3.expire = never
    result = cli("expire", "-c", config)
    assert result.returncode == 2
    assert b"pop3.expire is never" in result.stderr
    assert cli("expire", "-c", config, "nobody").returncode == 2
    assert cli("expire", "-c", config, "--days", "1", "nobody").returncode == 67
