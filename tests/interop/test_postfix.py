"""A real Postfix delivers into mailslot over LMTP, as the README's
"Integrating with Postfix" section configures it, and the mail is fetchable.

A private Postfix instance (its own config_directory, queue_directory and
data_directory in a directory under /tmp, smtpd on a free loopback port,
``inet_interfaces = loopback-only``, no chroot, a master.cf with only the
services needed, logging to a file through postlogd) receives the tricky
message set of ``tests/helpers/mail.py`` over SMTP from ``smtplib`` and
hands it to mailslot with its LMTP client:

- ``mailbox_transport = lmtp:inet:127.0.0.1:PORT`` (local domain, TCP),
- ``mailbox_transport = lmtp:unix:mailslot/lmtp`` (mailslot's ``lmtp.socket``
  in ``$queue_directory/mailslot``, a setgid directory of group postfix, so
  the 0660 socket is Postfix's to connect to),
- ``virtual_transport = lmtp:inet:...`` for a virtual domain.

poplib then fetches every message from mailslot and compares it, byte for
byte after line-end normalisation, with what smtplib sent, plus the
``Return-Path:``/``Delivered-To:`` mailslot adds and the one ``Received:``
line Postfix adds.  ``lmtp_line_length_limit = 0`` stops Postfix folding the
100 KB line (by default it breaks lines longer than 998 octets with
CRLF + space, RFC 5322 §2.1.1).

Postfix's master must start as root (it drops to ``mail_owner = postfix``),
so the test runs only as root; the directory under /tmp is world-searchable
for the ``postfix`` user.
"""

from __future__ import annotations

import contextlib
import grp
import os
import poplib
import pwd
import shutil
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers.clients import require_binary
from tests.helpers.mail import SENDER, compare, delivered, tricky_messages
from tests.helpers.server import ProcessServer, cli, free_port, write_config

pytestmark = pytest.mark.interop

PASSWORD = "postfix pass"

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mx.test
mydomain = test
myorigin = $myhostname
inet_interfaces = loopback-only
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
mydestination = localhost
local_recipient_maps =
alias_maps =
alias_database =
mailbox_transport = {transport}
virtual_mailbox_domains = example.org
virtual_transport = {transport}
message_size_limit = 52428800
mailbox_size_limit = 0
lmtp_line_length_limit = 0
maillog_file_prefixes = {root}
maillog_file = {root}/postfix.log
syslog_name = postfix-mailslot-test
biff = no
smtputf8_enable = no
"""

# Only what a message needs from smtpd to the LMTP client; no chroot.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
cleanup   unix  n - n - 0 cleanup
qmgr      unix  n - n 300 1 qmgr
rewrite   unix  - - n - - trivial-rewrite
bounce    unix  - - n - 0 bounce
defer     unix  - - n - 0 bounce
trace     unix  - - n - 0 bounce
verify    unix  - - n - 1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n - - proxymap
error     unix  - - n - - error
retry     unix  - - n - - error
discard   unix  - - n - - discard
local     unix  - n n - - local
virtual   unix  - n n - - virtual
lmtp      unix  - - n - - lmtp
smtp      unix  - - n - - smtp
anvil     unix  - - n - 1 anvil
scache    unix  - - n - 1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


@pytest.fixture
def root() -> Iterator[Path]:
    require_binary("postfix")
    if os.geteuid() != 0:
        pytest.skip("a private Postfix instance must be started as root")
    try:
        pwd.getpwnam("postfix")
        grp.getgrnam("postdrop")
    except KeyError as exc:
        pytest.skip(f"Postfix's system user or group is missing: {exc}")
    # pytest's tmp_path is 0700 root: the postfix user could not reach it.
    path = Path(tempfile.mkdtemp(prefix="mailslot-postfix-", dir="/tmp"))
    try:
        path.chmod(0o755)
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def postfix(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["postfix", "-c", str(root / "etc"), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def log_of(root: Path, tail: int = 6000) -> str:
    path = root / "postfix.log"
    return path.read_text(errors="replace")[-tail:] if path.exists() else "(no log)"


@contextlib.contextmanager
def running_postfix(root: Path, transport: str) -> Iterator[int]:
    """Start the private instance; yield its smtpd port; stop it."""
    port = free_port()
    etc = root / "etc"
    etc.mkdir()
    (etc / "main.cf").write_text(MAIN_CF.format(root=root, transport=transport))
    (etc / "master.cf").write_text(MASTER_CF.format(port=port))
    (root / "queue").mkdir(exist_ok=True)
    data = root / "data"
    data.mkdir()
    postfix_user = pwd.getpwnam("postfix")
    os.chown(data, postfix_user.pw_uid, postfix_user.pw_gid)
    started = postfix(root, "start")
    assert started.returncode == 0, started.stdout + started.stderr + log_of(root)
    pid_file = root / "queue" / "pid" / "master.pid"
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            assert time.monotonic() < deadline, "postfix smtpd not listening\n" + log_of(root)
            time.sleep(0.05)
        yield port
    finally:
        pid = int(pid_file.read_text().split()[0]) if pid_file.exists() else None
        postfix(root, "stop")
        deadline = time.monotonic() + 30
        while pid is not None and time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)


def wait_for_messages(address: tuple[str, int], user: str, count: int, root: Path) -> None:
    deadline = time.monotonic() + 60
    while True:
        client = poplib.POP3(*address, timeout=30)
        try:
            client.user(user)
            client.pass_(PASSWORD)
            if client.stat()[0] >= count:
                return
        finally:
            client.quit()
        assert time.monotonic() < deadline, "mail did not arrive\n" + log_of(root)
        time.sleep(0.1)


def wait_for_log(root: Path, text: str, count: int) -> str:
    """The whole log, once ``text`` appears ``count`` times (Postfix logs a
    delivery just after mailslot's reply, maybe after the mail is visible)."""
    deadline = time.monotonic() + 30
    while True:
        log = log_of(root, tail=10**8)
        if log.count(text) >= count or time.monotonic() > deadline:
            return log
        time.sleep(0.05)


def fetch_all(address: tuple[str, int], user: str) -> list[bytes]:
    client = poplib.POP3(*address, timeout=60)
    try:
        client.user(user)
        client.pass_(PASSWORD)
        count = client.stat()[0]
        messages = []
        for number in range(1, count + 1):
            lines = client.retr(number)[1]
            messages.append(b"".join(line + b"\r\n" for line in lines))
            client.dele(number)
        client.quit()
    finally:
        client.close()
    return messages


@pytest.mark.parametrize("route", ["mailbox_transport-inet", "mailbox_transport-unix", "virtual"])
def test_postfix_delivers_over_lmtp(
    route: str, root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(poplib, "_MAXLINE", 1 << 20)
    # The README's recipe: the socket in a directory under Postfix's queue
    # directory (reachable from its chroot too), setgid and group postfix,
    # so the 0660 socket mailslot creates there belongs to group postfix.
    socket_dir = root / "queue" / "mailslot"
    socket_dir.mkdir(parents=True)
    os.chown(socket_dir, -1, grp.getgrnam("postfix").gr_gid)
    socket_dir.chmod(0o2750)
    lmtp_socket = socket_dir / "lmtp"
    overrides: dict[str, object] = {"lmtp__listen": ["127.0.0.1:0"]}
    if route.endswith("unix"):
        overrides["lmtp__socket"] = str(lmtp_socket)
    config = write_config(tmp_path / "data", **overrides)
    domain = "example.org" if route == "virtual" else "localhost"
    user = f"carol@{domain}"
    added = cli(
        "user", "add", "-c", str(config), user, "--password-stdin", stdin=PASSWORD.encode() + b"\n"
    )
    assert added.returncode == 0, added.stderr
    server = ProcessServer(config)
    try:
        if route.endswith("unix"):
            assert lmtp_socket.stat().st_gid == grp.getgrnam("postfix").gr_gid
            # Relative to queue_directory, as Postfix resolves it.
            transport = "lmtp:unix:mailslot/lmtp"
            relay = "[mailslot/lmtp]"  # as Postfix logs it
        else:
            host, port = server.addresses["lmtp"]
            transport = f"lmtp:inet:{host}:{port}"
            relay = f"relay={host}[{host}]:{port},"
        messages = tricky_messages()
        with running_postfix(root, transport) as smtp_port:
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=120) as smtp:
                for message in messages:
                    refused = smtp.sendmail(SENDER, [user], message.data)
                    assert refused == {}
            wait_for_messages(server.address, user, len(messages), root)
            log = wait_for_log(root, "status=sent", len(messages))
        # Every message went the intended way: local(8) hands mailbox mail
        # to mailbox_transport; virtual_transport needs no local(8).
        sent = [line for line in log.splitlines() if "status=sent (250 2.0.0" in line]
        assert len(sent) == len(messages), (len(sent), len(messages))
        assert all(relay in line for line in sent), (relay, sent)
        passed = log.count(f"passing <{user}> to transport=lmtp")
        assert passed == (0 if route == "virtual" else len(messages)), log[-6000:]
        stored = fetch_all(server.address, user)
        expected = {m.name: delivered(m, user) for m in messages}
        # Postfix adds exactly one Received: line; the messages have none.
        problems = compare(stored, expected, client_headers=("Received",))
        assert not problems, "\n".join(problems)
        for data in stored:
            head = data.split(b"\r\n\r\n", 1)[0]
            assert head.count(b"\r\nReceived: ") == 1, head
            # mailslot's lines first, then Postfix's trace line.
            assert head.startswith(
                b"Return-Path: <%s>\r\nDelivered-To: %s\r\nReceived: from "
                % (SENDER.encode(), user.encode())
            ), head
        assert server.proc.poll() is None
        assert "Traceback" not in "".join(server.lines)
    finally:
        server.stop()
