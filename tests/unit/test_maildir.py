"""MaildirStore against real files in tmp_path (no filesystem mocks, except
``os.write``/``os.fsync`` failures, which cannot be provoked reliably as root)."""

from __future__ import annotations

import builtins
import errno
import io
import os
import random
import re
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO, cast

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mailslot.store import (
    DeliveryError,
    Maildrop,
    MaildropBusy,
    MaildropError,
    MaildropStore,
    MaildropUnavailable,
    MessageGone,
)
from mailslot.store import maildir as maildir_module
from mailslot.store.location import LocationTemplate
from mailslot.store.locks import LOCKS_NAME, MaildropLocks, lock_offset
from mailslot.store.maildir import (
    UIDLIST_NAME,
    MaildirMaildrop,
    MaildirStore,
    _WireCounter,
    import_uids,
)
from mailslot.wire import wire_size

UID_RE = re.compile(r"[\x21-\x7e]{1,70}")
BAD_NAMES = ["../x", "a/b", "a\\b", "a\x00b", "a\nb", "a\x7fb", ".", "..", ".hidden", ""]


@pytest.fixture
def store(tmp_path: Path) -> MaildirStore:
    return MaildirStore(f"{tmp_path}/{{domain}}/{{user}}/Maildir", hostname="mx.example")


@pytest.fixture
def maildir(tmp_path: Path) -> Path:
    return tmp_path / "example.org" / "bob" / "Maildir"


def deliver(store: MaildirStore, data: bytes) -> str:
    return store.deliver("bob", "example.org", io.BytesIO(data))


def drop(store: MaildirStore) -> MaildirMaildrop:
    return store.open("bob", "example.org")


def uids(store: MaildirStore) -> list[str]:
    with drop(store) as md:
        return [m.uid for m in md.messages]


def contents(md: MaildirMaildrop) -> list[bytes]:
    out = []
    for i in range(len(md.messages)):
        with md.open_message(i) as f:
            out.append(f.read())
    return out


def put(maildir: Path, sub: str, name: str, data: bytes) -> Path:
    """A message written by "another tool" (Postfix, Dovecot, a script)."""
    for d in ("cur", "new", "tmp"):
        (maildir / d).mkdir(parents=True, exist_ok=True)
    path = maildir / sub / name
    path.write_bytes(data)
    return path


@pytest.fixture
def message_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every builtins.open / os.open of a file under a cur/ or new/ directory."""
    seen: list[str] = []
    real_open, real_os_open = builtins.open, os.open

    def note(path: Any) -> None:
        if isinstance(path, str | os.PathLike) and Path(path).parent.name in ("cur", "new"):
            seen.append(os.fspath(path))

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        note(file)
        return real_open(file, *args, **kwargs)

    def counting_os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        note(path)
        return real_os_open(path, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    monkeypatch.setattr(os, "open", counting_os_open)
    return seen


# --- location template and names -------------------------------------------------


def test_template_expansion(tmp_path: Path, store: MaildirStore) -> None:
    assert store.maildir_path("bob", "example.org") == f"{tmp_path}/example.org/bob/Maildir"
    braces = MaildirStore(f"{tmp_path}/{{{{x}}}}/{{user}}")
    assert braces.maildir_path("bob", "") == f"{tmp_path}/{{x}}/bob"


@pytest.mark.parametrize(
    ("template", "root"),
    [
        ("/srv/mail/{domain}/{user}/Maildir", "/srv/mail"),
        ("/srv/mail/u-{user}/Maildir", "/srv/mail"),
        ("/srv/mail//x/{user}", "/srv/mail/x"),
        ("/srv/{{x}}/{user}", "/srv/{x}"),
        ("/srv/one/Maildir", "/srv/one"),
        ("/{user}", "/"),
    ],
)
def test_template_root_holds_the_lock_file(template: str, root: str) -> None:
    assert LocationTemplate(template).root == root
    assert MaildirStore(template).locks.path == os.path.realpath(os.path.join(root, LOCKS_NAME))


@pytest.mark.parametrize(
    "template",
    ["{foo}", "/srv/{foo}/{user}", "/srv/{user!r}", "/srv/{user:>9}", "/srv/{}", "/srv/{0}"],
)
def test_template_rejects_unknown_placeholders(template: str) -> None:
    with pytest.raises(ValueError, match="placeholder"):
        MaildirStore(template)


def test_template_error_names_the_placeholder() -> None:
    with pytest.raises(ValueError, match=r"\{foo\}"):
        MaildirStore("{foo}")
    with pytest.raises(ValueError, match=r"user\.__class__"):
        MaildirStore("/srv/{user.__class__}")


@pytest.mark.parametrize("template", ["relative/{user}", "", "/srv/{user"])
def test_template_rejects_malformed(template: str) -> None:
    with pytest.raises(ValueError):
        MaildirStore(template)


@pytest.mark.parametrize("bad", BAD_NAMES)
@pytest.mark.parametrize("which", ["user", "domain"])
def test_bad_names_rejected(tmp_path: Path, store: MaildirStore, bad: str, which: str) -> None:
    args = {"user": "bob", "domain": "example.org", which: bad}
    with pytest.raises(MaildropUnavailable) as opened:
        store.open(args["user"], args["domain"])
    assert opened.value.permanent
    with pytest.raises(DeliveryError) as delivered:
        store.deliver(args["user"], args["domain"], io.BytesIO(b"x\n"))
    assert not delivered.value.temporary
    assert list(tmp_path.iterdir()) == []  # nothing created anywhere


def test_utf8_names_fine(tmp_path: Path, store: MaildirStore) -> None:
    store.deliver("jürgen", "例え.jp", io.BytesIO(b"hi\n"))
    with store.open("jürgen", "例え.jp") as md:
        assert len(md.messages) == 1
    assert (tmp_path / "例え.jp" / "jürgen" / "Maildir" / "cur").is_dir()


def test_unused_placeholder_not_validated(tmp_path: Path) -> None:
    store = MaildirStore(f"{tmp_path}/{{user}}")
    with store.open("bob", "") as md:
        assert md.messages == ()


def test_directories_created_private(store: MaildirStore, maildir: Path) -> None:
    drop(store).close()
    for sub in ("", "cur", "new", "tmp"):
        assert (maildir / sub).stat().st_mode & 0o777 == 0o700


# --- locking ---------------------------------------------------------------------------


def test_lock_conflict_in_same_process(store: MaildirStore) -> None:
    first = drop(store)
    with pytest.raises(MaildropBusy):
        drop(store)
    first.close()
    first.close()  # idempotent
    second = drop(store)
    second.close()


def test_lock_conflict_between_threads(store: MaildirStore) -> None:
    drop(store).close()
    barrier = threading.Barrier(8)
    results: list[MaildirMaildrop | MaildropBusy] = []

    def attempt() -> None:
        barrier.wait()
        try:
            results.append(drop(store))
        except MaildropBusy as busy:
            results.append(busy)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [r for r in results if isinstance(r, MaildirMaildrop)]
    assert len(results) == 8 and len(winners) == 1
    winners[0].close()


HOLDER = """
import sys
from mailslot.store.locks import MaildropLocks
lock = MaildropLocks.for_path(sys.argv[1]).acquire(sys.argv[2])
print("locked", flush=True)
sys.stdin.read()
"""


def test_lock_conflict_across_processes(store: MaildirStore, maildir: Path) -> None:
    drop(store).close()
    with subprocess.Popen(
        [sys.executable, "-c", HOLDER, store.locks.path, str(maildir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    ) as holder:
        assert holder.stdin is not None and holder.stdout is not None
        assert holder.stdout.readline() == b"locked\n"
        try:
            with pytest.raises(MaildropBusy):
                drop(store)
            deliver(store, b"delivery does not wait\n")
            # Another maildrop of the same store is free meanwhile.
            store.open("carol", "example.org").close()
        finally:
            holder.stdin.close()  # the holder exits, its lock goes with it
            holder.wait(timeout=10)
    with drop(store) as md:
        assert len(md.messages) == 1


def test_lock_holds_no_descriptor_per_session(store: MaildirStore) -> None:
    before = open_fds()
    drops = [store.open(f"user{n}", "example.org") for n in range(200)]
    assert open_fds() == before + 1  # the shared lock file, once
    assert len(store.locks) == 200
    for md in drops[:199]:
        md.close()
    assert open_fds() == before + 1  # still held by the last session
    with pytest.raises(MaildropBusy):
        store.open("user199", "example.org")
    drops[199].close()
    assert open_fds() == before and len(store.locks) == 0


def test_lock_is_shared_by_stores_of_one_root(tmp_path: Path, store: MaildirStore) -> None:
    """Two stores (say the server's and the import's) spelling the root
    differently still exclude each other within one process."""
    other = MaildirStore(f"{tmp_path}/./{{domain}}/../{{domain}}/{{user}}/Maildir")
    assert other.locks is store.locks
    with drop(store), pytest.raises(MaildropBusy):
        other.open("bob", "example.org")


def test_lock_offset_depends_on_the_path_only() -> None:
    assert lock_offset("/srv/mail/a/Maildir") == lock_offset("/srv/mail//a/./Maildir/")
    assert lock_offset("/srv/mail/a/Maildir") != lock_offset("/srv/mail/b/Maildir")
    offsets = {lock_offset(f"/srv/mail/u{n}/Maildir") for n in range(10_000)}
    assert len(offsets) == 10_000 and all(0 <= o < 2**62 for o in offsets)


def test_unusable_lock_file_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    store = MaildirStore(f"{tmp_path}/{{user}}", lock_file=str(tmp_path / "file" / "locks"))
    with pytest.raises(OSError):
        store.locks.prepare()
    with pytest.raises(MaildropUnavailable, match=r"cannot open .*file/locks"):
        store.open("bob", "")
    assert MaildropLocks.for_path(tmp_path / "file" / "locks") is store.locks


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_failed_open_releases_lock(store: MaildirStore, maildir: Path) -> None:
    drop(store).close()
    uidlist = maildir / UIDLIST_NAME
    good = uidlist.read_bytes()
    uidlist.write_bytes(b"mailslot-uidlist 99 abc 1\n")  # a newer format: refuse it
    before = open_fds()
    with pytest.raises(MaildropUnavailable) as failed:
        drop(store)
    assert failed.value.permanent
    assert open_fds() == before  # neither the lock nor anything else leaked
    assert uidlist.read_bytes() == b"mailslot-uidlist 99 abc 1\n"  # not clobbered
    uidlist.write_bytes(good)
    drop(store).close()


def test_failed_uidlist_write_releases_lock_and_keeps_old_list(
    store: MaildirStore, maildir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    deliver(store, b"one\n")
    drop(store).close()
    old = (maildir / UIDLIST_NAME).read_bytes()
    deliver(store, b"two\n")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(os, "fsync", no_space)
        with pytest.raises(MaildropUnavailable) as failed:
            drop(store)
    assert not failed.value.permanent
    assert (maildir / UIDLIST_NAME).read_bytes() == old
    assert [p.name for p in maildir.iterdir() if p.is_file()] == [UIDLIST_NAME]
    with drop(store) as md:
        assert len(md.messages) == 2


# --- new/ to cur/, what counts as a message ---------------------------------------------


def test_new_moved_to_cur(store: MaildirStore, maildir: Path) -> None:
    names = [deliver(store, b"a\n"), deliver(store, b"b\n")]
    put(maildir, "new", "1700000000.M1P1.other:2,S", b"flagged in new\n")
    assert sorted(os.listdir(maildir / "new")) == sorted([*names, "1700000000.M1P1.other:2,S"])
    with drop(store) as md:
        assert contents(md) == [b"flagged in new\n", b"a\n", b"b\n"]
    assert os.listdir(maildir / "new") == []
    assert sorted(os.listdir(maildir / "cur")) == sorted(
        [n + ":2," for n in names] + ["1700000000.M1P1.other:2,S"]
    )


def test_ignores_dot_files_directories_and_symlinks(store: MaildirStore, maildir: Path) -> None:
    put(maildir, "cur", "1700000000.M1P1.h:2,", b"real\n")
    put(maildir, "cur", ".1700000000.M2P1.h:2,", b"dot\n")
    put(maildir, "new", ".hidden", b"dot in new\n")
    (maildir / "cur" / "1700000000.M3P1.h:2,").mkdir()
    (maildir / "cur" / "1700000000.M4P1.h:2,").symlink_to(maildir / "cur" / ".1700000000.M2P1.h:2,")
    with drop(store) as md:
        assert contents(md) == [b"real\n"]
    assert (maildir / "new" / ".hidden").exists()


# --- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"a\nb", 6),
        (b"a\r\nb\r\n", 6),
        (b"a\rb\r", 6),
        (b"a\nb\n", 6),
        (b"", 0),
        (b"\n", 2),
        (b"no final newline", 18),
        (b"mixed\r\n\n\rend", 16),
    ],
)
def test_sizes_as_transmitted(
    store: MaildirStore, maildir: Path, data: bytes, expected: int
) -> None:
    assert wire_size([data]) == expected  # the literal numbers, checked by hand
    put(maildir, "cur", "1700000001.M1P1.bare:2,", data)
    put(maildir, "cur", f"1700000002.M1P1.phys,S={len(data)}:2,S", data)
    put(maildir, "new", "1700000003.M1P1.newbare", data)
    deliver(store, data)
    with drop(store) as md:
        assert [m.size for m in md.messages] == [expected] * 4
    with drop(store) as md:  # from the uid list now
        assert [m.size for m in md.messages] == [expected] * 4


def test_w_in_name_is_trusted_without_reading(
    store: MaildirStore, maildir: Path, message_opens: list[str]
) -> None:
    # The W= value is deliberately not the content's: proof that it was used.
    put(maildir, "cur", "1700000000.M1P1.dovecot,S=3,W=999:2,S", b"a\nb")
    put(maildir, "new", "1700000001.M1P1.dovecot,W=42,S=1", b"z")
    with drop(store) as md:
        assert [m.size for m in md.messages] == [999, 42]
    assert message_opens == []


def test_sizes_cached_in_uidlist(
    store: MaildirStore, maildir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    put(maildir, "cur", "1700000000.M1P1.h:2,", b"a\nb")
    put(maildir, "cur", "1700000001.M1P1.h,S=3:2,", b"c\nd")
    drop(store).close()  # reads both once
    seen: list[str] = []
    real_open = builtins.open

    def counting_open(file: Any, *args: Any, **kwargs: Any) -> Any:
        seen.append(os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", counting_open)
    with drop(store) as md:
        assert [m.size for m in md.messages] == [6, 6]
    assert seen == [str(maildir / UIDLIST_NAME)]


# --- uids -------------------------------------------------------------------------------------


def test_uids_stable_and_well_formed(store: MaildirStore) -> None:
    for i in range(5):
        deliver(store, b"m%d\n" % i)
    first = uids(store)
    assert len(set(first)) == 5
    assert all(UID_RE.fullmatch(u) for u in first)
    assert uids(store) == first
    restarted = MaildirStore(store.maildir_path("bob", "example.org").replace("/bob/", "/{user}/"))
    with restarted.open("bob", "example.org") as md:
        assert [m.uid for m in md.messages] == first


def test_uid_survives_flag_rename(store: MaildirStore, maildir: Path) -> None:
    name = deliver(store, b"x\n")
    before = uids(store)
    os.rename(maildir / "cur" / f"{name}:2,", maildir / "cur" / f"{name}:2,S")
    assert uids(store) == before
    os.rename(maildir / "cur" / f"{name}:2,S", maildir / "cur" / f"{name}:2,ST")
    assert uids(store) == before


def test_uids_never_reused(store: MaildirStore) -> None:
    seen: set[str] = set()
    for round_ in range(3):
        deliver(store, b"round %d\n" % round_)
        with drop(store) as md:
            new = {m.uid for m in md.messages}
            assert not new & seen
            seen |= new
            assert md.commit(range(len(md.messages))) == len(md.messages)


def test_uidlist_lost_gives_distinct_uids(store: MaildirStore, maildir: Path) -> None:
    for i in range(3):
        deliver(store, b"%d\n" % i)
    old = set(uids(store))
    (maildir / UIDLIST_NAME).unlink()
    new = set(uids(store))
    assert len(new) == 3 and not new & old


def test_corrupt_uidlist_starts_over(store: MaildirStore, maildir: Path) -> None:
    deliver(store, b"x\n")
    old = uids(store)
    (maildir / UIDLIST_NAME).write_bytes(b"\x00garbage\nmore garbage\n")
    new = uids(store)
    assert len(new) == 1 and new != old


def test_new_messages_in_name_order(store: MaildirStore, maildir: Path) -> None:
    # Maildir names start with the delivery time in seconds: name order is
    # arrival order to the second (within one second, by the rest of the name).
    put(maildir, "cur", "1700000002.M10P1.h:2,", b"3\n")
    put(maildir, "cur", "1700000002.M9P1.h:2,", b"4\n")
    put(maildir, "new", "1700000001.M5P1.h", b"2\n")
    put(maildir, "cur", "1700000000.1234_1.h:2,", b"1\n")
    with drop(store) as md:
        assert contents(md) == [b"1\n", b"2\n", b"3\n", b"4\n"]
        first = [m.uid for m in md.messages]
    # A later arrival with an older timestamp goes after the known ones.
    put(maildir, "new", "1.M1P1.h", b"5\n")
    with drop(store) as md:
        assert contents(md) == [b"1\n", b"2\n", b"3\n", b"4\n", b"5\n"]
        assert [m.uid for m in md.messages][:4] == first


def test_uidlist_replaced_atomically(store: MaildirStore, maildir: Path) -> None:
    deliver(store, b"x\n")
    drop(store).close()
    uidlist = maildir / UIDLIST_NAME
    inode = uidlist.stat().st_ino
    (maildir / "mailslot-uidlist.tmp").write_bytes(b"left by a crash")
    deliver(store, b"y\n")
    drop(store).close()
    assert uidlist.stat().st_ino != inode  # renamed over, not rewritten in place
    assert [p.name for p in maildir.iterdir() if p.is_file()] == [UIDLIST_NAME]
    lines = uidlist.read_text().splitlines()
    assert lines[0].startswith("mailslot-uidlist 1 ")
    assert len(lines) == 3


def test_unchanged_uidlist_not_rewritten(store: MaildirStore, maildir: Path) -> None:
    deliver(store, b"x\n")
    drop(store).close()
    inode = (maildir / UIDLIST_NAME).stat().st_ino
    drop(store).close()
    assert (maildir / UIDLIST_NAME).stat().st_ino == inode


def test_import_uids(store: MaildirStore, maildir: Path) -> None:
    put(maildir, "cur", "1700000000.M1P1.h,S=2,W=3:2,S", b"a\n")
    put(maildir, "cur", "1700000001.M1P1.h:2,", b"b\nc")
    put(maildir, "cur", "1700000002.M1P1.h:2,", b"not imported\n")
    import_uids(
        maildir,
        [
            ("00000002abcdef12", None, "1700000001.M1P1.h"),
            ("00000001abcdef12", 3, "1700000000.M1P1.h,S=2,W=3"),
        ],
        next_uid=10,
        lock=store.locks,
    )
    with drop(store) as md:
        got = [(m.uid, m.size) for m in md.messages]
        assert contents(md)[:2] == [b"b\nc", b"a\n"]
        with pytest.raises(MaildropBusy):
            import_uids(maildir, [], lock=store.locks)
    assert got[:2] == [("00000002abcdef12", 6), ("00000001abcdef12", 3)]
    assert got[2][0].startswith("10.")
    assert uids(store) == [u for u, _ in got]


@pytest.mark.parametrize(
    "entries",
    [
        [("has space", 1, "a")],
        [("x" * 71, 1, "a")],
        [("", 1, "a")],
        [("é", 1, "a")],
        [("u1", 1, "a"), ("u1", 1, "b")],
        [("u1", 1, "a"), ("u2", 1, "a")],
        [("u1", 1, "a:2,S")],
        [("u1", -1, "a")],
    ],
)
def test_import_uids_rejects(
    store: MaildirStore, maildir: Path, entries: list[tuple[str, int | None, str]]
) -> None:
    with pytest.raises(ValueError):
        import_uids(maildir, entries, lock=store.locks)


# --- the session snapshot ---------------------------------------------------------------------


def test_delivery_during_session_invisible(store: MaildirStore) -> None:
    deliver(store, b"before\n")
    with drop(store) as md:
        deliver(store, b"during\n")  # never waits on the session's lock
        assert contents(md) == [b"before\n"]
        assert len(md.messages) == 1
    with drop(store) as md:
        assert contents(md) == [b"before\n", b"during\n"]


def test_commit_removes_only_chosen(store: MaildirStore, maildir: Path) -> None:
    for i in range(5):
        deliver(store, b"m%d\n" % i)
    with drop(store) as md:
        keep = [md.messages[i].uid for i in (0, 2, 4)]
        assert md.commit({1, 3}) == 2
    assert len(os.listdir(maildir / "cur")) == 3
    with drop(store) as md:
        assert [m.uid for m in md.messages] == keep
        assert contents(md) == [b"m0\n", b"m2\n", b"m4\n"]
    assert len((maildir / UIDLIST_NAME).read_text().splitlines()) == 4


def test_commit_marks_retrieved_messages_seen(store: MaildirStore, maildir: Path) -> None:
    names = [deliver(store, b"m%d\n" % i) for i in range(4)]
    with drop(store) as md:
        uids_before = [m.uid for m in md.messages]
        cur = maildir / "cur"
        os.rename(cur / f"{names[1]}:2,", cur / f"{names[1]}:2,RF")  # flagged by another tool
        os.rename(cur / f"{names[2]}:2,", cur / f"{names[2]}:2,S")  # seen already
        (cur / f"{names[3]}:2,").unlink()  # gone: nothing to mark
        started = time.time()
        assert md.commit([], retrieved=[0, 1, 2, 3]) == 0
        assert md.seen_before(started - 60) == []  # the rename is the clock: all just now
        assert md.seen_before(time.time() + 1) == [0, 1, 2]
    assert sorted(os.listdir(cur)) == sorted(
        [f"{names[0]}:2,S", f"{names[1]}:2,FRS", f"{names[2]}:2,S"]
    )
    with drop(store) as md:  # UIDs follow the renamed files
        assert [m.uid for m in md.messages] == uids_before[:3]
        assert contents(md) == [b"m0\n", b"m1\n", b"m2\n"]


def test_commit_nothing(store: MaildirStore) -> None:
    deliver(store, b"x\n")
    with drop(store) as md:
        assert md.commit([]) == 0
    assert len(uids(store)) == 1


def test_commit_already_deleted_or_renamed(store: MaildirStore, maildir: Path) -> None:
    names = [deliver(store, b"m%d\n" % i) for i in range(3)]
    with drop(store) as md:
        (maildir / "cur" / f"{names[0]}:2,").unlink()  # another tool deleted it
        os.rename(maildir / "cur" / f"{names[1]}:2,", maildir / "cur" / f"{names[1]}:2,S")
        assert md.commit([0, 1]) == 2
    assert os.listdir(maildir / "cur") == [f"{names[2]}:2,"]


def test_commit_failure_is_maildrop_error(store: MaildirStore, maildir: Path) -> None:
    names = [deliver(store, b"m%d\n" % i) for i in range(3)]
    with drop(store) as md:
        # A directory where the file was: unlink fails with EISDIR, even as root.
        victim = maildir / "cur" / f"{names[1]}:2,"
        victim.unlink()
        victim.mkdir()
        with pytest.raises(MaildropError):
            md.commit([1])
    assert (maildir / "cur" / f"{names[0]}:2,").read_bytes() == b"m0\n"
    assert (maildir / "cur" / f"{names[2]}:2,").read_bytes() == b"m2\n"


def test_open_message_gone(store: MaildirStore, maildir: Path) -> None:
    name = deliver(store, b"x\n")
    with drop(store) as md:
        (maildir / "cur" / f"{name}:2,").unlink()
        with pytest.raises(MessageGone):
            md.open_message(0)
        with pytest.raises(MessageGone):
            md.open_message(0)
        with pytest.raises(IndexError):
            md.open_message(1)
        with pytest.raises(IndexError):
            md.open_message(-1)


def test_open_message_after_flag_rename(store: MaildirStore, maildir: Path) -> None:
    names = [deliver(store, b"m%d\n" % i) for i in range(2)]
    with drop(store) as md:
        os.rename(maildir / "cur" / f"{names[1]}:2,", maildir / "cur" / f"{names[1]}:2,RS")
        assert contents(md) == [b"m0\n", b"m1\n"]
        # Moved back to new/ by some tool: still found.
        os.rename(maildir / "cur" / f"{names[0]}:2,", maildir / "new" / names[0])
        assert contents(md) == [b"m0\n", b"m1\n"]


def test_closed_maildrop_refuses(store: MaildirStore) -> None:
    deliver(store, b"x\n")
    md = drop(store)
    md.close()
    with pytest.raises(MaildropError):
        md.open_message(0)
    with pytest.raises(MaildropError):
        md.commit([0])


# --- delivery ----------------------------------------------------------------------------------

UNIQUE_RE = re.compile(
    r"(\d+)\.M(\d+)P(\d+)Q(\d+)R([0-9a-f]+)\.(?P<host>[^,]+),S=(?P<s>\d+),W=(?P<w>\d+)"
)


@pytest.mark.parametrize("data", [b"a\nb", b"x" * (3 << 20) + b"\r\n", b"", b"\r\n.\r\n"])
def test_deliver_names_and_content(store: MaildirStore, maildir: Path, data: bytes) -> None:
    name = deliver(store, data)
    match = UNIQUE_RE.fullmatch(name)
    assert match is not None
    assert match["host"] == "mx.example"
    assert int(match["s"]) == len(data)
    assert int(match["w"]) == wire_size([data])
    assert os.listdir(maildir / "new") == [name]
    assert (maildir / "new" / name).read_bytes() == data
    assert os.listdir(maildir / "tmp") == []


def test_deliver_names_unique_and_hostname_escaped(tmp_path: Path) -> None:
    store = MaildirStore(f"{tmp_path}/{{user}}", hostname="a/b:c,d")
    names = {store.deliver("bob", "", io.BytesIO(b"x")) for _ in range(50)}
    assert len(names) == 50
    assert all(".a\\057b\\072c\\054d,S=1,W=3" in n for n in names)
    with pytest.raises(ValueError):
        MaildirStore(f"{tmp_path}/{{user}}", hostname="bad host")


def test_deliver_from_current_position(store: MaildirStore, maildir: Path) -> None:
    message = io.BytesIO(b"Return-Path: <x>\nbody\n")
    message.seek(17)
    name = deliver_file(store, message)
    assert (maildir / "new" / name).read_bytes() == b"body\n"


def deliver_file(store: MaildirStore, message: BinaryIO) -> str:
    return store.deliver("bob", "example.org", message)


class Trickle(io.RawIOBase):
    """Short reads: a CRLF may be split across two chunks."""

    def __init__(self, data: bytes, sizes: list[int]) -> None:
        self._data, self._sizes = data, sizes

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        size = self._sizes.pop(0) if self._sizes else len(self._data)
        chunk, self._data = self._data[:size], self._data[size:]
        buffer[: len(chunk)] = chunk
        return len(chunk)


def test_deliver_short_reads(store: MaildirStore, maildir: Path) -> None:
    data = b"a\r\nb\rc\n\r\r\nend\r"
    name = deliver_file(store, cast(BinaryIO, Trickle(data, [2, 1, 3, 1, 1, 2])))
    assert name.endswith(f",S={len(data)},W={wire_size([data])}")
    assert (maildir / "new" / name).read_bytes() == data


@given(st.binary(max_size=64), st.lists(st.integers(min_value=1, max_value=8), max_size=20))
def test_wire_counter_matches_wire_size(data: bytes, cuts: list[int]) -> None:
    counter = _WireCounter()
    chunks, rest = [], data
    for cut in cuts:
        chunks.append(rest[:cut])
        rest = rest[cut:]
    chunks.append(rest)
    for chunk in chunks:
        counter.feed(chunk)
    assert counter.octets == len(data)
    assert counter.wire_size == wire_size([data]) == wire_size(chunks)


@given(st.lists(st.sampled_from([b"a", b"\r", b"\n", b"\r\n", b"."]), max_size=30))
def test_wire_counter_line_end_soup(pieces: list[bytes]) -> None:
    counter = _WireCounter()
    for piece in pieces:
        counter.feed(piece)
    assert counter.wire_size == wire_size([b"".join(pieces)])


@pytest.mark.parametrize("failing", ["write", "fsync", "dir-fsync"])
def test_deliver_failure_leaves_nothing(
    store: MaildirStore, maildir: Path, monkeypatch: pytest.MonkeyPatch, failing: str
) -> None:
    drop(store).close()  # the Maildir exists; only the delivery fails
    real_fsync = os.fsync
    calls = 0

    def no_space(*args: Any) -> Any:
        raise OSError(errno.ENOSPC, "No space left on device")

    def second_fsync_fails(fd: int) -> None:
        nonlocal calls
        calls += 1
        if calls == 2:
            no_space()
        real_fsync(fd)

    if failing == "write":
        monkeypatch.setattr(os, "write", no_space)
    elif failing == "fsync":
        monkeypatch.setattr(os, "fsync", no_space)
    else:
        monkeypatch.setattr(os, "fsync", second_fsync_fails)
    with pytest.raises(DeliveryError) as failed:
        deliver(store, b"lost\n")
    assert failed.value.temporary
    assert os.listdir(maildir / "tmp") == []
    assert os.listdir(maildir / "new") == []


def test_deliver_creates_maildir(store: MaildirStore, maildir: Path, tmp_path: Path) -> None:
    assert not maildir.exists()
    name = deliver(store, b"first\n")
    assert (maildir / "new" / name).exists()
    assert not (tmp_path / LOCKS_NAME).exists()  # delivery never touches the locks


def test_store_satisfies_protocol(store: MaildirStore) -> None:
    as_store: MaildropStore = store
    md: Maildrop = as_store.open("bob", "example.org")
    md.close()


@pytest.fixture(autouse=True)
def _no_leaked_fds() -> Iterator[None]:
    before = open_fds()
    yield
    assert open_fds() <= before


# --- warm opens from the uid list ---------------------------------------------


def age(directory: Path, seconds: float = 10) -> None:
    """Make a directory look untouched for a while (the settle rule)."""
    then = time.time() - seconds
    os.utime(directory, (then, then))


class ScanCounter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[str] = []
        real = maildir_module._list

        def counting(directory: str) -> list[str]:
            self.calls.append(os.path.basename(directory))
            return real(directory)

        monkeypatch.setattr(maildir_module, "_list", counting)


def test_warm_open_trusts_the_uid_list(
    store: MaildirStore, maildir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for n in range(3):
        deliver(store, b"message %d\n" % n)
    first = uids(store)  # moves new/ to cur/: cur/ changed just now
    age(maildir / "cur")
    assert uids(store) == first  # a full scan of a settled cur/ records its mtime
    counter = ScanCounter(monkeypatch)
    with drop(store) as md:
        assert [m.uid for m in md.messages] == first
        assert contents(md) == [b"message 0\n", b"message 1\n", b"message 2\n"]
    assert counter.calls == ["new"]  # cur/ was not listed


@pytest.mark.parametrize("change", ["flag-rename", "removal", "delivery", "file-in-cur"])
def test_any_change_brings_back_the_full_scan(
    store: MaildirStore, maildir: Path, monkeypatch: pytest.MonkeyPatch, change: str
) -> None:
    for n in range(3):
        deliver(store, b"message %d\n" % n)
    first = uids(store)
    age(maildir / "cur")
    uids(store)
    cur = sorted((maildir / "cur").iterdir())
    if change == "flag-rename":
        cur[0].rename(cur[0].with_name(cur[0].name + "S"))
        expected = [b"message 0\n", b"message 1\n", b"message 2\n"]
    elif change == "removal":
        cur[1].unlink()
        expected = [b"message 0\n", b"message 2\n"]
    elif change == "delivery":
        deliver(store, b"message 3\n")
        expected = [b"message 0\n", b"message 1\n", b"message 2\n", b"message 3\n"]
    else:
        put(maildir, "cur", "9999999999.M1P1.other:2,S", b"message 3\n")
        expected = [b"message 0\n", b"message 1\n", b"message 2\n", b"message 3\n"]
    counter = ScanCounter(monkeypatch)
    with drop(store) as md:
        assert contents(md) == expected
        assert [m.uid for m in md.messages][:2] == [
            u for u in first if change != "removal" or u != first[1]
        ][:2]
    assert "cur" in counter.calls


def test_a_commit_forgets_the_trusted_mtime(store: MaildirStore, maildir: Path) -> None:
    for n in range(3):
        deliver(store, b"message %d\n" % n)
    uids(store)
    age(maildir / "cur")
    uids(store)
    assert len((maildir / UIDLIST_NAME).read_text().split("\n")[0].split()) == 5
    with drop(store) as md:
        md.commit([0])
    assert len((maildir / UIDLIST_NAME).read_text().split("\n")[0].split()) == 4
    with drop(store) as md:
        assert contents(md) == [b"message 1\n", b"message 2\n"]


# --- a new uid list waits for commit or close -----------------------------------------


def unsaved(md: MaildirMaildrop) -> bool:
    return md.unsaved  # a call: mypy would keep an attribute narrowed across commit()


def test_new_uid_list_is_written_at_commit_or_close(store: MaildirStore, maildir: Path) -> None:
    deliver(store, b"one\n")
    deliver(store, b"two\n")
    md = drop(store)
    shown = [m.uid for m in md.messages]
    assert unsaved(md) and not (maildir / UIDLIST_NAME).exists()
    md.commit([])
    assert not unsaved(md) and (maildir / UIDLIST_NAME).exists()
    md.close()
    assert uids(store) == shown
    (maildir / UIDLIST_NAME).unlink()
    md = drop(store)
    again = [m.uid for m in md.messages]
    md.close()  # no commit: close writes it
    assert (maildir / UIDLIST_NAME).exists() and uids(store) == again
    assert set(again).isdisjoint(shown)  # a lost list means a new validity


def test_an_existing_uid_list_is_updated_before_open_returns(
    store: MaildirStore, maildir: Path
) -> None:
    deliver(store, b"one\n")
    drop(store).close()
    deliver(store, b"two\n")
    with drop(store) as md:
        assert not md.unsaved
        assert md.messages[1].uid.encode() in (maildir / UIDLIST_NAME).read_bytes()


CRASHER = """
import os, sys
from mailslot.store.maildir import MaildirStore
drop = MaildirStore(sys.argv[1]).open("bob", "example.org")
print(" ".join(m.uid for m in drop.messages), flush=True)
os._exit(0)  # a crash: neither commit nor close
"""


def test_crash_before_the_new_list_is_written_reuses_no_uid(
    tmp_path: Path, store: MaildirStore, maildir: Path
) -> None:
    for n in range(3):
        deliver(store, b"message %d\n" % n)
    template = f"{tmp_path}/{{domain}}/{{user}}/Maildir"
    crashed = subprocess.run(
        [sys.executable, "-c", CRASHER, template], capture_output=True, check=True, timeout=60
    )
    shown = crashed.stdout.decode().split()
    assert len(shown) == 3 and not (maildir / UIDLIST_NAME).exists()
    after = uids(store)
    assert len(after) == 3 and set(after).isdisjoint(shown)
    assert uids(store) == after


def test_symlinks_and_directories_in_cur_are_never_read(
    tmp_path: Path, store: MaildirStore, maildir: Path
) -> None:
    deliver(store, b"real\n")
    secret = tmp_path / "secret"
    secret.write_bytes(b"not mail\n")
    (maildir / "cur").mkdir(parents=True, exist_ok=True)
    os.symlink(secret, maildir / "cur" / "1700000000.M1P1.h:2,")  # no size in the name
    os.symlink(secret, maildir / "cur" / "1700000001.M1P1.h,S=9,W=10:2,")  # a size in the name
    os.mkdir(maildir / "cur" / "1700000002.M1P1.h,W=5:2,")
    os.mkfifo(maildir / "cur" / "1700000003.M1P1.h,W=5:2,")  # would block a plain open
    os.mkfifo(maildir / "cur" / "1700000004.M1P1.h:2,")
    with drop(store) as md:
        found = []
        for index in range(len(md.messages)):
            try:
                with md.open_message(index) as file:
                    found.append(file.read())
            except MessageGone:
                pass
        assert found == [b"real\n"]


def test_a_new_open_waits_for_a_session_that_is_finishing(
    store: MaildirStore, maildir: Path
) -> None:
    deliver(store, b"one\n")
    md = drop(store)
    # An active session: no wait, even when waiting is allowed.
    started = time.monotonic()
    with pytest.raises(MaildropBusy):
        store.locks.acquire(str(maildir), wait=5)
    assert time.monotonic() - started < 1
    # A session that is saving its state on the way out: wait for it.
    md._lock.finishing()
    releaser = threading.Timer(0.3, md.close)
    releaser.start()
    started = time.monotonic()
    with drop(store) as again:
        assert time.monotonic() - started >= 0.2
        assert len(again.messages) == 1
    releaser.join()


def test_locks_under_contention_exclude_and_leak_nothing(tmp_path: Path) -> None:
    """Threads taking and releasing a few maildrops at random: never two
    holders at once, and afterwards another process can take every one (no
    byte left locked in the kernel)."""
    locks = MaildropLocks.for_path(tmp_path / LOCKS_NAME)
    maildirs = [str(tmp_path / f"m{n}") for n in range(4)]
    inside: set[str] = set()
    guard = threading.Lock()
    overlaps: list[str] = []

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        for _ in range(300):
            maildir = rng.choice(maildirs)
            try:
                lock = locks.acquire(maildir)
            except MaildropBusy:
                continue
            with guard:
                if maildir in inside:
                    overlaps.append(maildir)
                inside.add(maildir)
            time.sleep(rng.random() / 10_000)
            with guard:
                inside.discard(maildir)
            lock.release()

    # Held throughout, so the file stays open: a byte left locked would stay.
    anchor = locks.acquire(str(tmp_path / "anchor"))
    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert overlaps == [] and len(locks) == 1
    for maildir in maildirs:
        taken = subprocess.run(
            [sys.executable, "-c", HOLDER, locks.path, maildir],
            input=b"",
            capture_output=True,
            timeout=60,
            check=False,
        )
        assert taken.stdout == b"locked\n", taken.stderr
    anchor.release()
    assert len(locks) == 0
