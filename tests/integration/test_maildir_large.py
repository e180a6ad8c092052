"""A 100,000-message Maildir: open must not read message files when their
names carry ``,W=``.  Timings are printed (``pytest -s``), never asserted."""

from __future__ import annotations

import builtins
import os
import time
from pathlib import Path
from typing import Any

import pytest

from mailslot.store.maildir import UIDLIST_NAME, MaildirStore

COUNT = 100_000
BODY = b"From: a@example.org\nSubject: hi\n\nhello\n"
WIRE = len(BODY) + BODY.count(b"\n")


def build(maildir: Path) -> None:
    """Real files, hard-linked in groups under 100,000 Dovecot-style names:
    fast to make, and each name is a directory entry like a real message."""
    for sub in ("cur", "new", "tmp"):
        (maildir / sub).mkdir(parents=True)
    cur = maildir / "cur"
    source = maildir / "tmp" / "source"
    for i in range(COUNT):
        if i % 10_000 == 0:  # ext4 allows 65,000 links per inode
            source.unlink(missing_ok=True)
            source.write_bytes(BODY)
        # Ten deliveries per second, Dovecot's name layout, some with flags.
        seconds, usec = 1_700_000_000 + i // 10, i % 10
        flags = "S" if i % 3 else ""
        os.link(source, cur / f"{seconds}.M{usec}P4242.mx,S={len(BODY)},W={WIRE}:2,{flags}")
    source.unlink()


@pytest.mark.slow
def test_open_100k_without_reading_messages(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    maildir = tmp_path / "bob" / "Maildir"
    started = time.perf_counter()
    build(maildir)
    print(f"\nbuilt {COUNT} messages in {time.perf_counter() - started:.2f} s")

    message_opens: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def note(path: Any) -> None:
        if isinstance(path, int):
            return  # open(fd): the os.open before it was counted
        if Path(os.fspath(path)).parent.name in ("cur", "new", "tmp"):
            message_opens.append(os.fspath(path))

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        note(file)
        return real_open(file, *args, **kwargs)

    def counting_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        note(path)
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(os, "open", counting_os_open)

    store = MaildirStore(f"{tmp_path}/{{user}}/Maildir")
    timings = []
    for label in ("cold (no uid list)", "warm (uid list)", "warm again"):
        started = time.perf_counter()
        maildrop = store.open("bob", "example.org")
        elapsed = time.perf_counter() - started
        timings.append(elapsed)
        print(f"open {label}: {elapsed * 1000:.0f} ms")
        try:
            messages = maildrop.messages
            assert len(messages) == COUNT
            assert sum(m.size for m in messages) == COUNT * WIRE
            assert len({m.uid for m in messages}) == COUNT
            if label.startswith("cold"):
                first_uids = [m.uid for m in messages]
            else:
                assert [m.uid for m in messages] == first_uids
        finally:
            maildrop.close()
        assert message_opens == []
    assert (maildir / UIDLIST_NAME).exists()

    # Reading a message still works, and a commit of a few keeps the rest.
    with store.open("bob", "example.org") as maildrop:
        with maildrop.open_message(COUNT - 1) as file:
            assert file.read() == BODY
        assert maildrop.commit(range(0, COUNT, 10_000)) == 10
    with store.open("bob", "example.org") as maildrop:
        assert len(maildrop.messages) == COUNT - 10
        assert maildrop.messages[0].uid == first_uids[1]
