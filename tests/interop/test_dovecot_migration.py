"""A real Dovecot hands out UIDLs, mailslot takes its Maildir over, and a
POP3 client that left its mail on the server sees the very same list.

A private Dovecot (own base_dir, 127.0.0.1 on a free port, passwd-file
``{PLAIN}`` auth) serves a Maildir delivered into by hand.  poplib lists,
deletes one message and lists again (this makes Dovecot write
``dovecot-uidlist``, with ``P`` fields when ``pop3_save_uidl`` is on).
Dovecot is stopped, one more message arrives, the Maildir is imported and
mailslot serves it: the UIDLs Dovecot showed are shown again in the same
order, with the same message text; the late message gets a fresh UIDL.

As root, Dovecot's mail processes run as ``nobody`` (it refuses uid 0) in a
directory under /tmp that ``nobody`` can traverse; otherwise everything runs
as the current user.
"""

from __future__ import annotations

import contextlib
import grp
import os
import poplib
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from mailslot.server.app import open_store
from mailslot.store.migrate import import_dovecot_maildir
from tests.helpers.clients import require_binary
from tests.helpers.server import add_user, free_port, make_settings, running

pytestmark = pytest.mark.interop

PASSWORD = "dovecot pass"
USER = "carol"

MESSAGES = [
    b"From: a@example.org\nSubject: plain\n\nHello.\n",
    b"From: b@example.org\r\nSubject: CRLF and dots\r\n\r\n.leading dot\r\n.\r\n..two\r\nend\r\n",
    b"From: c@example.org\nSubject: to be deleted\n\nbye\n",
    b"From: d@example.org\nSubject: no final newline\n\nlast line",
    b"From: e@example.org\nSubject: 8-bit\n\n" + "Gr\u00fc\u00dfe \u2014 ok\n".encode() * 50,
    b"From: f@example.org\nSubject: empty body\n\n",
]
LATE = b"From: g@example.org\nSubject: after Dovecot's last session\n\nnew\n"

CONFIG = """\
base_dir = {root}/run
state_dir = {root}/state
log_path = {root}/dovecot.log
protocols = pop3
listen = 127.0.0.1
ssl = no
disable_plaintext_auth = no
auth_mechanisms = plain
first_valid_uid = {uid}
mail_location = maildir:~/Maildir
pop3_uidl_format = {uidl_format}
pop3_save_uidl = {save_uidl}
default_internal_user = {internal_user}
default_internal_group = {internal_group}
default_login_user = {login_user}
passdb {{
  driver = passwd-file
  args = {root}/passwd
}}
userdb {{
  driver = passwd-file
  args = {root}/passwd
}}
service anvil {{
  chroot =
}}
service pop3-login {{
  chroot =
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {port}
  }}
  inet_listener pop3s {{
    port = 0
  }}
}}
"""


@dataclass(frozen=True)
class RunAs:
    """Who Dovecot's processes run as (the names of its settings)."""

    uid: int
    gid: int
    internal_user: str
    internal_group: str
    login_user: str


@pytest.fixture
def dovecot_root(tmp_path: Path) -> Iterator[tuple[Path, RunAs]]:
    """A directory for Dovecot, and who its processes run as."""
    require_binary("dovecot")
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.getuid())
        group = grp.getgrgid(os.getgid()).gr_name
        yield tmp_path, RunAs(me.pw_uid, me.pw_gid, me.pw_name, group, me.pw_name)
        return
    try:
        pwd.getpwnam("dovecot")
        pwd.getpwnam("dovenull")
        nobody = pwd.getpwnam("nobody")
    except KeyError as exc:
        pytest.skip(f"Dovecot's system users are missing: {exc}")
    # tmp_path's parents are 0700 root: nobody could not reach the Maildir.
    root = Path(tempfile.mkdtemp(prefix="mailslot-dovecot-", dir="/tmp"))
    try:
        root.chmod(0o755)
        internal_group = grp.getgrgid(pwd.getpwnam("dovecot").pw_gid).gr_name
        yield root, RunAs(nobody.pw_uid, nobody.pw_gid, "dovecot", internal_group, "dovenull")
    finally:
        shutil.rmtree(root, ignore_errors=True)


def deliver(maildir: Path, name: str, data: bytes, owner: tuple[int, int]) -> None:
    """Like an MDA: write into tmp/, rename into new/."""
    tmp = maildir / "tmp" / name
    tmp.write_bytes(data)
    if os.geteuid() == 0:
        os.chown(tmp, *owner)
    tmp.rename(maildir / "new" / name)


@contextlib.contextmanager
def dovecot(root: Path, config: str, port: int) -> Iterator[None]:
    binary = require_binary("dovecot")
    conf = root / "dovecot.conf"
    conf.write_text(config)
    proc = subprocess.Popen([binary, "-F", "-c", str(conf)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                _out, err = proc.communicate()
                log = (root / "dovecot.log").read_text() if (root / "dovecot.log").exists() else ""
                pytest.fail(f"dovecot exited: {err!r} {log}")
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
                break
            if time.monotonic() > deadline:
                pytest.fail("dovecot did not start listening")
            time.sleep(0.05)
        yield
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stderr is not None:
            proc.stderr.close()


def session(
    address: tuple[str, int], user: str, *, delete: int | None = None
) -> tuple[list[bytes], list[int], list[bytes]]:
    """UIDL, LIST and RETR of every message; optionally DELE one and QUIT."""
    client = poplib.POP3(*address, timeout=30)
    try:
        client.user(user)
        client.pass_(PASSWORD)
        uidls = [line.split(b" ", 1)[1] for line in client.uidl()[1]]
        sizes = [int(line.split(b" ")[1]) for line in client.list()[1]]
        bodies = [
            b"\r\n".join(client.retr(number)[1]) + b"\r\n" for number in range(1, len(uidls) + 1)
        ]
        if delete is not None:
            client.dele(delete)
        client.quit()
    finally:
        client.close()
    return uidls, sizes, bodies


@pytest.mark.parametrize(
    ("uidl_format", "save_uidl", "import_format"),
    [
        ("%08Xu%08Xv", "no", "%08Xu%08Xv"),  # the 2.3 default
        ("%f", "no", "%f"),
        ("%g", "no", "%g"),
        ("%u-%v", "no", "%u-%v"),
        # Saved UIDLs (P fields) win over whatever format the import is given.
        ("%v.%u", "yes", "%08Xu%08Xv"),
    ],
)
def test_dovecot_uidls_survive_the_migration(
    dovecot_root: tuple[Path, RunAs],
    tmp_path: Path,
    uidl_format: str,
    save_uidl: str,
    import_format: str,
) -> None:
    root, run_as = dovecot_root
    uid, gid = run_as.uid, run_as.gid
    home = root / "home" / USER
    maildir = home / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    (root / "passwd").write_text(f"{USER}:{{PLAIN}}{PASSWORD}:{uid}:{gid}::{home}::\n")
    if os.geteuid() == 0:
        for path in [home, *home.rglob("*")]:
            os.chown(path, uid, gid)
    for number, message in enumerate(MESSAGES):
        deliver(maildir, f"{1700000000 + number}.M{number}P4242.mx.test", message, (uid, gid))

    port = free_port()
    config = CONFIG.format(
        root=root, port=port, uidl_format=uidl_format, save_uidl=save_uidl, **asdict(run_as)
    )
    with dovecot(root, config, port):
        first, _sizes, _bodies = session(("127.0.0.1", port), USER, delete=3)
        assert len(first) == len(MESSAGES)
        seen, dovecot_sizes, dovecot_bodies = session(("127.0.0.1", port), USER)
    assert seen == first[:2] + first[3:]  # message 3 is gone, the rest kept their UIDLs
    uidlist = (maildir / "dovecot-uidlist").read_text()
    assert (" P" in uidlist) == (save_uidl == "yes"), uidlist
    deliver(maildir, "1800000000.M9P4242.mx.test", LATE, (uid, gid))

    settings = make_settings(tmp_path / "data")
    add_user(settings, USER, PASSWORD)
    store = open_store(settings)
    target = Path(store.maildir_path(USER, settings.default_domain))
    report = import_dovecot_maildir(maildir, target, locks=store.locks, uidl_format=import_format)
    assert report.messages == len(seen) + 1
    assert report.uidls_kept == len(seen)
    assert report.skipped == []

    with running(settings) as server:
        uidls, sizes, bodies = session(server.address, USER)
    assert uidls[: len(seen)] == seen
    assert uidls[-1] not in seen
    assert bodies[: len(seen)] == dovecot_bodies
    assert bodies[-1] == LATE.replace(b"\n", b"\r\n")
    # RFC 1939 sizes.  Dovecot leaves out the CRLF it adds after a message
    # without a final newline; mailslot counts every octet it sends.
    kept = MESSAGES[:2] + MESSAGES[3:]
    assert sizes == [len(body) for body in bodies]
    assert dovecot_sizes == [
        len(body) - (0 if message.endswith(b"\n") else 2)
        for body, message in zip(bodies, kept, strict=False)
    ]
