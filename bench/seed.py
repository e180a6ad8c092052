"""Seed the benchmark data once: Maildirs both servers serve, and their users.

Maildirs live at ``<work>/mail/<domain>/<user>/Maildir`` (mailslot's
``{domain}/{user}`` template and Dovecot's ``%d/%n`` are the same path).
Messages are written straight into ``cur/`` with the ``:2,`` suffix, like
mail a POP3 server has already seen once, so neither server renames them
on first open.  File names carry ``,S=<size on disk>,W=<size on the wire>``
(Dovecot's convention, read by both servers), so neither has to read a
message to answer STAT or LIST.  Files use LF line ends, as Postfix and
Dovecot's LDA write them; both servers send CRLF.

Seeding is idempotent: ``seed-manifest.json`` records what each maildrop
holds, and a maildrop is rewritten only if that differs or its ``cur/`` does
not hold the expected number of files.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

DOMAIN = "bench.test"
SEED_VERSION = 1
_T0 = 1_700_000_000

_BODY_LINE = b"The quick brown fox jumps over the lazy dog; POP3 benchmark text line.\n"


@dataclass(frozen=True, slots=True)
class Mailbox:
    user: str  # local part
    count: int  # messages
    size: int  # octets per message on disk (LF line ends)

    def maildir(self, mail_root: Path) -> Path:
        return mail_root / DOMAIN / self.user / "Maildir"


def message_template(size: int) -> tuple[bytes, bytes]:
    """A message of exactly ``size`` octets as ``(header with %012d, body)``.

    The header has a 12-digit slot for the message number (``%`` formatting
    keeps the size fixed).  One body line starts with a dot, so servers must
    dot-stuff and the load generator must undo it.
    """
    header = (
        b"Return-Path: <sender@bench.test>\n"
        b"Message-ID: <%012d.bench@bench.test>\n"
        b"Date: Mon, 01 Jan 2024 00:00:00 +0000\n"
        b"From: Benchmark Sender <sender@bench.test>\n"
        b"To: Benchmark Recipient <rcpt@bench.test>\n"
        b"Subject: benchmark message\n"
        b"MIME-Version: 1.0\n"
        b"Content-Type: text/plain; charset=us-ascii\n"
        b"\n"
    )
    header_size = len(header % 0)
    remaining = size - header_size
    if remaining < 16:
        raise ValueError(f"message size {size} is too small")
    lines: list[bytes] = [b".A line that starts with a dot, dot-stuffed on the wire.\n"]
    remaining -= len(lines[0])
    while remaining > len(_BODY_LINE) + 8:
        lines.append(_BODY_LINE)
        remaining -= len(_BODY_LINE)
    lines.append(b"x" * (remaining - 1) + b"\n")
    body = b"".join(lines)
    assert header_size + len(body) == size
    return header, body


def wire_size(message: bytes) -> int:
    """Octets on the wire: every LF becomes CRLF (the messages have no CR)."""
    return len(message) + message.count(b"\n")


def _owner_ids(owner: str | None) -> tuple[int, int] | None:
    if owner is None or os.geteuid() != 0:
        return None
    import pwd  # noqa: PLC0415 (Unix only, only when chowning)

    entry = pwd.getpwnam(owner)
    return entry.pw_uid, entry.pw_gid


def _mkdir(path: Path, ids: tuple[int, int] | None) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if ids is not None:
        os.chown(path, *ids)


def _write_mailbox(box: Mailbox, mail_root: Path, ids: tuple[int, int] | None) -> None:
    maildir = box.maildir(mail_root)
    if maildir.exists():
        shutil.rmtree(maildir)  # stale: other content, or indexes of other content
    for directory in (mail_root, mail_root / DOMAIN, maildir.parent, maildir):
        _mkdir(directory, ids)
    for sub in ("cur", "new", "tmp"):
        _mkdir(maildir / sub, ids)
    header, body = message_template(box.size)
    cur = maildir / "cur"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    for number in range(box.count):
        message = header % number + body
        name = (
            f"{_T0 + number}.M{number % 1_000_000:06d}P1Q{number}.bench"
            f",S={len(message)},W={wire_size(message)}:2,"
        )
        fd = os.open(cur / name, flags, 0o600)
        try:
            view = memoryview(message)
            while view:
                view = view[os.write(fd, view) :]
            if ids is not None:
                os.fchown(fd, *ids)
        finally:
            os.close(fd)


def _count_files(directory: Path) -> int:
    try:
        with os.scandir(directory) as entries:
            return sum(1 for entry in entries if not entry.name.startswith("."))
    except FileNotFoundError:
        return -1


def seed_mailboxes(
    work: Path, boxes: Iterable[Mailbox], *, owner: str | None, log: bool = True
) -> int:
    """Make each maildrop hold exactly its messages; returns how many were (re)written."""
    mail_root = work / "mail"
    manifest_path = work / "seed-manifest.json"
    try:
        manifest: dict[str, dict[str, int]] = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        manifest = {}
    ids = _owner_ids(owner)
    written = 0
    for box in boxes:
        wanted = {**asdict(box), "version": SEED_VERSION}
        wanted.pop("user")
        cur = box.maildir(mail_root) / "cur"
        if manifest.get(box.user) == wanted and _count_files(cur) == box.count:
            continue
        if log and box.count >= 1000:
            print(f"seeding {box.user}: {box.count} x {box.size} octets", file=sys.stderr)
        manifest.pop(box.user, None)
        _write_mailbox(box, mail_root, ids)
        manifest[box.user] = wanted
        written += 1
        if written % 500 == 0:
            manifest_path.write_text(json.dumps(manifest))
    manifest_path.write_text(json.dumps(manifest))
    if written:
        os.sync()
    return written


def remove_index_files(maildir: Path, prefixes: tuple[str, ...]) -> list[str]:
    """Delete a server's own index/uid files in the Maildir's top directory."""
    removed = []
    with os.scandir(maildir) as entries:
        for entry in entries:
            if entry.is_file() and entry.name.startswith(prefixes):
                os.unlink(entry.path)
                removed.append(entry.name)
    return sorted(removed)
