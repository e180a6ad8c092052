"""Maildir backend: the maildrop a Postfix/Dovecot/Courier setup delivers to.

Theory of operation
-------------------

Layout.  ``MaildirStore(location)`` expands a template such as
``/srv/mail/{domain}/{user}/Maildir`` (see ``location.py``) into a Maildir
with ``tmp/ new/ cur/``, created (mode 0o700) on first use.  Next to them
lives one file of ours, ``mailslot-uidlist``.  Only the top-level folder
(INBOX) is POP3's; Maildir++ subfolders are ignored.

Locking.  ``open`` takes the maildrop's lock in the store's shared lock file
(``locks.py``: one byte per maildrop, no descriptor per session), so two
sessions conflict whether they are in two processes or in one.  ``close()``
releases it, and so does any failure inside ``open`` after it was taken.  The
lock file is ``mailslot.locks`` in the directory before the template's first
placeholder (``/srv/mail`` for ``/srv/mail/{domain}/{user}/Maildir``) unless
``lock_file`` names another; every process that shares the maildrops must
use the same one.  Delivery never takes it: Maildir delivery is lock-free by
design (write to ``tmp/``, link into ``new/``).

Opening.  Under the lock, every file of ``new/`` is renamed into ``cur/``
with the ``:2,`` info suffix, as POP3 servers do, then ``cur/`` is listed
once with ``os.scandir``.  A message's key is its *base name*, the file name
before the first ``:``, because other tools rename ``x:2,S`` to ``x:2,ST``
when flags change.

UIDs and sizes.  ``mailslot-uidlist`` maps base names to a UIDL string and
the size as transmitted (RFC 1939 §11: CRLF line ends, final CRLF)::

    mailslot-uidlist 1 <validity> <next-uid> [<cur-mtime>]
    <uid> <wire-size or -> <file name or base name>
    ...

Lines are in snapshot order.  Messages not in the list yet come after the
listed ones, in file-name order (for Maildir names, delivery time to the
second), each with ``f"{next_uid}.{validity}"``, and the counter grows;
it never goes back, so a uid is never handed out twice.  If the list is
lost, a fresh validity (hex time plus random) makes every new uid distinct
from every old one.  Imported uids (``import_uids``, e.g. Dovecot's) are kept
verbatim.  A new message's size comes from ``,W=<n>`` in its name (Dovecot
and we write it) without touching the file; otherwise the file is read once
through ``wire.wire_size`` and the result cached in the list.  ``,S=`` alone
is the physical size, which differs from the wire size unless every line
already ends in CRLF, so it is not trusted.  The list is rewritten (temp
file, fsync, rename, fsync of the directory) before ``open`` returns, only if
something changed: uids survive a session that never reaches UPDATE.  The one
exception is a list written for the first time (none, or an unreadable one):
no uid of its new validity was ever shown, so it waits for ``commit`` or
``close`` (``unsaved``), which keeps a 100,000-message first login short; a
crash before then makes the next open start another validity.  While
``close`` writes it, a new ``open`` in this process waits for it (the lock is
"finishing", see ``locks.py``) instead of answering ``[IN-USE]``.

Warm opens.  When the list was written after a full scan of a ``cur/`` that
had not changed for two seconds, the header records that directory's
modification time (ns) and every line carries the full file name.  If
``cur/`` still has that mtime and ``new/`` is empty, the list *is* the
directory, and ``open`` takes the snapshot from it without listing ``cur/``
(as Dovecot trusts its uidlist when the directory mtimes match).  Any
delivery, flag rename or removal by another tool changes the mtime and
brings back the full scan; a rename missed anyway is found by the rescan on
the first miss.

Snapshot.  ``messages`` is fixed for the session; ``open_message`` finds a
renamed file again by rescanning (only after a miss); ``commit`` unlinks the
chosen files, fsyncs ``cur/``, and rewrites the list without them.

Delivery.  ``deliver`` streams the message into ``tmp/<unique>``, counting
its physical and wire sizes in the same pass, fsyncs it, links it to
``new/<unique>,S=<size>,W=<wire size>`` and fsyncs ``new/``: the message is
on stable storage before ``deliver`` returns.  Any ``OSError`` removes what
was written and becomes ``DeliveryError(temporary=True)``.

Usage.  ``usage`` counts the messages of ``cur/`` and ``new/`` and their
physical sizes (``,S=`` from the name, else ``stat``) for delivery quotas;
it takes no lock and reads no file.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import itertools
import logging
import os
import re
import secrets
import socket
import stat
import time
from collections.abc import Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import BinaryIO, Final, Self, cast

from mailslot.store.base import (
    DeliveryError,
    MaildropError,
    MaildropUnavailable,
    MessageGone,
    MessageInfo,
)
from mailslot.store.location import InvalidName, LocationTemplate
from mailslot.store.locks import LOCKS_NAME, MaildropLock, MaildropLocks
from mailslot.wire import wire_size

__all__ = ["UIDLIST_NAME", "MaildirMaildrop", "MaildirStore", "import_uids"]

UIDLIST_NAME: Final = "mailslot-uidlist"
_UIDLIST_TMP: Final = "mailslot-uidlist.tmp"
_MAGIC: Final = "mailslot-uidlist"
_VERSION: Final = "1"
_CHUNK: Final = 1 << 20
_INFO: Final = ":2,"
_UID_MAX: Final = 70
# cur/ must have been left alone this long before its mtime is trusted: a
# change within the same timestamp tick would otherwise go unseen.
_SETTLE_NS: Final = 2_000_000_000
# Leading "<seconds>." and an optional "M<microseconds>" right after it.
_DELIVERY_TIME: Final = re.compile(r"(\d+)\.(?:M(\d+))?")
_VALIDITY: Final = re.compile(r"[0-9a-zA-Z]{1,32}")
# "<uid> <size or -> <base name>": uid 1-70 characters in 0x21-0x7E.
_UIDLIST_LINE: Final = re.compile(r"^([!-~]{1,70}) (\d+|-) ([^\n]+)$", re.MULTILINE)
_LINK_UNSUPPORTED: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP})
_OPEN_FLAGS: Final = os.O_CLOEXEC | os.O_NOFOLLOW
# How long open() waits for a session of this process that has ended and is
# saving a new uid list (a 100,000-message list takes about 0.1 s).
_FINISHING_WAIT: Final = 10.0

_log = logging.getLogger(__name__)
_deliveries = itertools.count()  # the Q<n> of unique names; next() is atomic


# --- small filesystem helpers -------------------------------------------------


def _ensure_dirs(maildir: str) -> None:
    os.makedirs(maildir, 0o700, exist_ok=True)
    for sub in ("cur", "new", "tmp"):
        with contextlib.suppress(FileExistsError):
            os.mkdir(os.path.join(maildir, sub), 0o700)


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes | bytearray | memoryview) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _unlink_quietly(path: str) -> None:
    with contextlib.suppress(OSError):
        os.unlink(path)


def _list(directory: str) -> list[str]:
    """The non-dot names of ``directory``.

    ``os.listdir``, not ``scandir``: no object per entry, a quarter faster on
    100,000 names.  Entries are not checked for being regular files here;
    every open of a message is (``_open_regular``), so a symlink or a
    directory in ``cur/`` is never read.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return [name for name in names if name[0] != "."]


def _scan(directory: str) -> dict[str, str]:
    """The non-dot names of ``directory`` as {base name: file name}."""
    return {name.partition(":")[0]: name for name in _list(directory)}


def _open_regular(path: str) -> BinaryIO:
    """Open a message file, unbuffered: never through a symlink, never
    anything but a regular file (``FileNotFoundError`` otherwise, as if
    it were not there)."""
    try:
        # O_NONBLOCK: a FIFO planted in cur/ must not block the open (a
        # regular file ignores the flag); the check below then refuses it.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _OPEN_FLAGS)
    except OSError as exc:
        if exc.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise FileNotFoundError(errno.ENOENT, "a symlink, not a message", path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise FileNotFoundError(errno.ENOENT, "not a regular file", path)
        # Unbuffered: the caller reads big chunks, and a BufferedReader per
        # message is measurable at thousands of RETRs a second.
        return open(fd, "rb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


def _wire_sizes(bases: Sequence[str]) -> list[int | None]:
    """``_name_wire_size`` of every name, at C speed when ``,W=<n>`` ends
    every name (Dovecot's and our own names)."""
    fields = [base.rpartition(",W=")[2] for base in bases]
    digits = "".join(fields)
    if (
        "" not in fields
        and digits.isascii()
        and digits.isdigit()
        and "".join(bases).count(",W=") == len(bases)  # a name "123" has no size
    ):
        return list(map(int, fields))
    return [_name_wire_size(base) for base in bases]


def _infos(uids: Iterable[str], sizes: Iterable[int]) -> list[MessageInfo]:
    # tuple.__new__ straight from C: half the cost of MessageInfo(...) each.
    return cast(
        list[MessageInfo],
        list(map(tuple.__new__, repeat(MessageInfo), zip(uids, sizes, strict=True))),
    )


def _name_wire_size(base: str) -> int | None:
    """The ``,W=<n>`` field of a Maildir base name (Dovecot's convention)."""
    start = base.find(",W=")
    if start < 0:
        return None
    end = base.find(",", start + 3)
    digits = base[start + 3 : end if end >= 0 else None]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def _name_physical_size(base: str) -> int | None:
    """The ``,S=<n>`` field of a Maildir base name: the file's size in octets."""
    start = base.find(",S=")
    if start < 0:
        return None
    end = base.find(",", start + 3)
    digits = base[start + 3 : end if end >= 0 else None]
    return int(digits) if digits.isascii() and digits.isdigit() else None


def _file_wire_size(path: str) -> int | None:
    """Read the file once; ``None`` if it vanished meanwhile (or is no file)."""
    try:
        with _open_regular(path) as file:
            return wire_size(iter(lambda: file.read(_CHUNK), b""))
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def _no_gc() -> Iterator[None]:
    """Build a snapshot without the cyclic garbage collector.

    A 100,000-message snapshot allocates 100,000 tuples; with the collector
    on, its generations run over them again and again and the open takes
    twice as long.  None of them can form a cycle.  The collector is
    process-wide: it is only re-enabled if it was on.
    """
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _delivery_order(base: str) -> tuple[int, int, str]:
    match = _DELIVERY_TIME.match(base)
    if match is None:
        return (1 << 62, 0, base)  # no timestamp: after every dated name
    return (int(match[1]), int(match[2] or 0), base)


class _WireCounter:
    """``wire.wire_size`` one chunk at a time, without copying the chunks.

    Each of CRLF, bare CR and bare LF becomes CRLF on the wire, so over the
    whole stream: wire = octets + count(CR) + count(LF) - 2 * count(CRLF),
    plus 2 for a missing final line end.  A CRLF split across two chunks is
    caught by remembering the last octet.
    """

    __slots__ = ("_extra", "_last", "octets")

    def __init__(self) -> None:
        self.octets = 0
        self._extra = 0
        self._last = b""

    def feed(self, chunk: bytes) -> None:
        if not chunk:
            return
        extra = chunk.count(b"\r") + chunk.count(b"\n") - 2 * chunk.count(b"\r\n")
        if self._last == b"\r" and chunk[:1] == b"\n":
            extra -= 2
        self._extra += extra
        self.octets += len(chunk)
        self._last = bytes(chunk[-1:])

    @property
    def wire_size(self) -> int:
        if not self.octets:
            return 0
        return self.octets + self._extra + (0 if self._last in (b"\r", b"\n") else 2)


# --- the uid list ---------------------------------------------------------------


@dataclass(slots=True, kw_only=True)
class _Uidlist:
    validity: str
    next_uid: int
    rows: list[tuple[str, str, str]]  # (uid, size or "-", file or base name), file order
    clean: bool  # exactly as on disk: no rewrite needed for its own sake
    cur_mtime: int | None = None  # cur/'s mtime when the rows described it exactly
    on_disk: bool = True  # False: no list (or an unreadable one), a new validity

    def entries(self) -> dict[str, tuple[str, int | None]]:
        """base name -> (uid, size), in file order; the first of duplicates wins."""
        entries: dict[str, tuple[str, int | None]] = {}
        for uid, size, name in self.rows:
            entries.setdefault(name.partition(":")[0], (uid, None if size == "-" else int(size)))
        return entries


def _new_validity() -> str:
    # Time makes it grow, randomness covers a clock set back or two lists
    # created in the same second.
    return f"{int(time.time()):x}{secrets.token_hex(2)}"


def _read_uidlist(maildir: str) -> _Uidlist:
    path = os.path.join(maildir, UIDLIST_NAME)
    try:
        with open(path, "rb") as file:
            text = file.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return _Uidlist(validity=_new_validity(), next_uid=1, rows=[], clean=False, on_disk=False)
    first_line = text.partition("\n")[0]
    header = first_line.split(" ")
    cur_mtime = None
    if len(header) == 5 and header[4].isascii() and header[4].isdigit():
        cur_mtime = int(header.pop())
    if len(header) == 4 and header[0] == _MAGIC and header[1] != _VERSION:
        # Written by a newer mailslot: overwriting it could lose uids.
        raise MaildropUnavailable(f"{path}: unsupported version {header[1]}", permanent=True)
    if not (
        len(header) == 4
        and header[0] == _MAGIC
        and header[3].isascii()
        and header[3].isdigit()
        and _VALIDITY.fullmatch(header[2])
    ):
        _log.warning("%s: bad header, starting a new uid validity", path)
        return _Uidlist(validity=_new_validity(), next_uid=1, rows=[], clean=False, on_disk=False)
    # One C-level regex pass over the whole file instead of a Python loop of
    # splits and checks: this is the hot part of opening a large maildrop.
    rows = _UIDLIST_LINE.findall(text, len(first_line) + 1)
    expected = text.count("\n") - 1 if text.endswith("\n") else -1  # -1: no final newline
    clean = len(rows) == expected
    if not clean:
        _log.warning("%s: skipped malformed lines", path)
    return _Uidlist(
        validity=header[2],
        next_uid=int(header[3]),
        rows=rows,
        clean=clean,
        cur_mtime=cur_mtime if clean else None,
    )


def _write_uidlist(
    maildir: str,
    validity: str,
    next_uid: int,
    rows: Iterable[tuple[str, int | None, str]],
    *,
    cur_mtime: int | None = None,
) -> None:
    """Replace the uid list atomically and durably.  ``cur_mtime`` only when
    the rows carry full file names and describe ``cur/`` exactly."""
    mtime = f" {cur_mtime}" if cur_mtime is not None else ""
    lines = [f"{_MAGIC} {_VERSION} {validity} {next_uid}{mtime}\n"]
    lines += [f"{uid} {'-' if size is None else size} {base}\n" for uid, size, base in rows]
    data = "".join(lines).encode("utf-8", "surrogateescape")
    tmp = os.path.join(maildir, _UIDLIST_TMP)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | _OPEN_FLAGS, 0o600)
    try:
        try:
            _write_all(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, os.path.join(maildir, UIDLIST_NAME))
    except BaseException:
        _unlink_quietly(tmp)
        raise
    _fsync_dir(maildir)


def import_uids(
    maildir: str | os.PathLike[str],
    entries: Iterable[tuple[str, int | None, str]],
    *,
    next_uid: int | None = None,
    lock: MaildropLocks | MaildropLock,
) -> None:
    """Replace the uid list of ``maildir`` with ``entries``, for migrations.

    Each entry is ``(uid, wire_size, base_name)``: ``uid`` is kept verbatim
    (1-70 characters in 0x21-0x7E, unique), ``wire_size`` may be ``None``
    (computed at the next open), ``base_name`` is the file name before
    ``:2,``.  Their order is the snapshot order.  Messages not listed get
    fresh uids at the next open.  The existing validity is kept and the
    counter becomes ``max(current, next_uid)``: it never goes back.  ``lock``
    is the store's lock table, to take the maildrop lock for the write
    (``MaildropBusy`` while a session is open), or the lock the caller holds.
    """
    path = os.fspath(maildir)
    rows = list(entries)
    uids: set[str] = set()
    bases: set[str] = set()
    for uid, size, base in rows:
        if not 0 < len(uid) <= _UID_MAX or not all("!" <= c <= "~" for c in uid):
            raise ValueError(f"invalid uid {uid!r}")
        if size is not None and size < 0:
            raise ValueError(f"negative size for {base!r}")
        if not base or base[0] == "." or any(c in base for c in ":/\n\r"):
            raise ValueError(f"invalid base name {base!r}")
        if uid in uids or base in bases:
            raise ValueError(f"duplicate uid or base name: {uid!r} {base!r}")
        uids.add(uid)
        bases.add(base)
    if next_uid is not None and next_uid < 1:
        raise ValueError("next_uid must be positive")
    if isinstance(lock, MaildropLock) and not lock.held:
        raise ValueError("the maildrop lock has been released")
    _ensure_dirs(path)
    held = lock.acquire(path) if isinstance(lock, MaildropLocks) else None
    try:
        current = _read_uidlist(path)
        _write_uidlist(path, current.validity, max(current.next_uid, next_uid or 1), rows)
    finally:
        if held is not None:
            held.release()


# --- the maildrop -----------------------------------------------------------------


class MaildirMaildrop:
    """One locked POP3 session's view of a Maildir (see the module docstring)."""

    __slots__ = (
        "_bases",
        "_lock",
        "_messages",
        "_names",
        "_next_uid",
        "_removed",
        "_unsaved",
        "_validity",
        "path",
    )

    def __init__(self, path: str, lock: MaildropLock) -> None:
        self.path = path
        self._lock = lock
        self._removed: set[int] = set()
        # File names relative to cur/, or "new/<name>" for one found in new/;
        # None once a rescan could not find the message.
        self._names: list[str | None] = []
        self._bases: list[str] | None = []  # None: derive from _names when needed
        self._messages: tuple[MessageInfo, ...] = ()
        self._validity = ""
        self._next_uid = 1
        # Not None: the uid list still to be written, with this cur/ mtime.
        self._unsaved: tuple[int | None] | None = None

    def _load(self) -> None:
        cur = os.path.join(self.path, "cur")
        new = os.path.join(self.path, "new")
        pending = _scan(new)
        uidlist = _read_uidlist(self.path)
        if (
            not pending
            and uidlist.cur_mtime is not None
            and os.stat(cur).st_mtime_ns == uidlist.cur_mtime
            and self._trust(uidlist)
        ):
            return
        for name in pending.values():
            target = name if ":" in name else name + _INFO
            # Gone already?  Another reader moved or removed it: cur/ decides.
            with contextlib.suppress(FileNotFoundError):
                os.rename(os.path.join(new, name), os.path.join(cur, target))
        # Not fsynced: either directory holding the file after a crash is fine.
        listed_at = os.stat(cur).st_mtime_ns  # before the scan: a later change moves it on
        names = _list(cur)
        dirty = not uidlist.clean
        infos: list[MessageInfo] = []
        bases: list[str] = []
        if uidlist.rows:
            present = {name.partition(":")[0]: name for name in names}
            if not self._match_listed(uidlist.rows, present, bases, infos):
                dirty = True  # a file gone, or a size not cached
            names = list(present.values())
        next_uid = uidlist.next_uid
        if names:
            dirty = True
            fresh, fresh_bases, sizes = self._fresh(cur, names)
            uids = [f"{n}.{uidlist.validity}" for n in range(next_uid, next_uid + len(fresh))]
            next_uid += len(fresh)
            self._names += fresh
            bases += fresh_bases
            infos += _infos(uids, sizes)
        self._bases = bases
        self._messages = tuple(infos)
        self._validity, self._next_uid = uidlist.validity, next_uid
        settled = listed_at if time.time_ns() - listed_at > _SETTLE_NS else None
        if not uidlist.on_disk:
            # A new validity: no uid of it has been shown to anyone, so the
            # list may wait for commit() or close(), off the login's path.  A
            # crash before then loses nothing: the next open starts yet
            # another validity, and no uid is ever given to two messages.
            self._unsaved = (settled,)
        elif dirty or settled != uidlist.cur_mtime:
            self._save(cur_mtime=settled)

    def _match_listed(
        self,
        rows: list[tuple[str, str, str]],
        present: dict[str, str],
        bases: list[str],
        infos: list[MessageInfo],
    ) -> bool:
        """Take the listed messages still present out of ``present``, in list
        order; False if the list needs rewriting for it."""
        uids, sizes, listed = zip(*rows, strict=True)
        listed_bases = [name.partition(":")[0] for name in listed]
        # pop() of a base listed twice misses the second time: first one wins.
        found = list(map(present.pop, listed_bases, repeat(None)))
        digits = "".join(sizes)
        if None not in found and digits.isascii() and digits.isdigit():
            # The common case at C speed: every file there, every size cached.
            self._names += cast(list[str], found)
            bases += listed_bases
            infos += _infos(uids, map(int, sizes))
            return True
        cur = os.path.join(self.path, "cur")
        complete = True
        for uid, size, base, name in zip(uids, sizes, listed_bases, found, strict=True):
            if name is None:
                complete = False  # its file is gone: drop the entry
                continue
            wire = int(size) if size.isascii() and size.isdigit() else None
            if wire is None:
                complete = False
                wire = _file_wire_size(os.path.join(cur, name))  # imported without one
                if wire is None:
                    continue
            self._names.append(name)
            bases.append(base)
            infos.append(MessageInfo(uid, wire))
        return complete

    @staticmethod
    def _fresh(cur: str, names: list[str]) -> tuple[list[str], list[str], list[int]]:
        """Names new to the uid list: in name order (delivery time to the
        second for Maildir names), with their base names and wire sizes."""
        names.sort()
        bases = [name.partition(":")[0] for name in names]
        blob = "".join(bases)
        if "\n" in blob or "\r" in blob or len(set(bases)) < len(bases):
            # Rare: a name the list cannot hold, or one message in two files
            # (x:2, and x:2,S), of which the first in name order is kept.
            seen: set[str] = set()
            keep = []
            for index, base in enumerate(bases):
                if "\n" in base or "\r" in base:
                    _log.warning("%s: ignoring unlistable file name %r", cur, base)
                elif base not in seen:
                    seen.add(base)
                    keep.append(index)
            names = [names[index] for index in keep]
            bases = [bases[index] for index in keep]
        sizes = _wire_sizes(bases)
        if None not in sizes:
            return names, bases, cast(list[int], sizes)
        kept: tuple[list[str], list[str], list[int]] = ([], [], [])
        for name, base, named in zip(names, bases, sizes, strict=True):
            size = named if named is not None else _file_wire_size(os.path.join(cur, name))
            if size is None:
                continue  # vanished meanwhile
            kept[0].append(name)
            kept[1].append(base)
            kept[2].append(size)
        return kept

    def _trust(self, uidlist: _Uidlist) -> bool:
        """Take the snapshot from the list alone (see "Warm opens")."""
        uids, sizes, names = zip(*uidlist.rows, strict=True) if uidlist.rows else ((), (), ())
        digits = "".join(sizes)
        if not (digits.isascii() and digits.isdigit()) and sizes:
            return False  # a size not cached ("-"): take the slow path
        self._names = list(names)
        self._bases = None
        self._messages = tuple(_infos(uids, map(int, sizes)))
        self._validity, self._next_uid = uidlist.validity, uidlist.next_uid
        return True

    def _base_names(self) -> list[str]:
        if self._bases is None:
            self._bases = [(n or "").partition(":")[0] for n in self._names]
        return self._bases

    def _save(self, *, cur_mtime: int | None = None) -> None:
        names = self._names
        rows: Iterable[tuple[str, int | None, str]]
        plain = cast(list[str], names)  # if the test below holds
        if not self._removed and None not in names and "/" not in "".join(plain):
            # The common case, straight from the snapshot (one tuple per row).
            rows = ((u, size, name) for (u, size), name in zip(self._messages, plain, strict=True))
        else:
            removed = self._removed
            rows = (
                (info.uid, info.size, name if name and "/" not in name else base)
                for index, (info, base, name) in enumerate(
                    zip(self._messages, self._base_names(), names, strict=True)
                )
                if index not in removed
            )
        _write_uidlist(self.path, self._validity, self._next_uid, rows, cur_mtime=cur_mtime)
        self._unsaved = None

    @property
    def messages(self) -> Sequence[MessageInfo]:
        return self._messages

    def _file(self, index: int) -> str | None:
        if not 0 <= index < len(self._messages):
            raise IndexError(f"no message at index {index}")
        name = self._names[index]
        return None if name is None else self._path_of(name)

    def _path_of(self, name: str) -> str:
        return os.path.join(self.path, name if "/" in name else os.path.join("cur", name))

    def _rescan(self) -> None:
        """Refresh every file name after a miss: flags changed, or mail moved."""
        found = {
            base: "new/" + name for base, name in _scan(os.path.join(self.path, "new")).items()
        }
        found.update(_scan(os.path.join(self.path, "cur")))
        self._names = [found.get(base) for base in self._base_names()]

    def _check_open(self) -> None:
        if not self._lock.held:
            raise MaildropError("maildrop is closed")

    def open_message(self, index: int) -> BinaryIO:
        self._check_open()
        for attempt in range(2):
            path = self._file(index)
            if path is None:
                break  # a rescan already missed it: gone for good
            try:
                return _open_regular(path)
            except FileNotFoundError:
                if attempt:
                    break
            except OSError as exc:
                raise MaildropError(f"cannot read {path}: {exc.strerror}") from exc
            try:
                self._rescan()
            except OSError as exc:
                raise MaildropError(f"cannot list {self.path}: {exc.strerror}") from exc
        raise MessageGone(f"message {index + 1} was removed from {self.path}")

    def commit(self, indexes: Collection[int], retrieved: Collection[int] = ()) -> int:
        self._check_open()
        chosen = sorted(set(indexes) - self._removed)
        for index in chosen:
            self._file(index)  # IndexError before touching anything
        try:
            for index in chosen:
                self._unlink(index)
                self._removed.add(index)
            if chosen:
                _fsync_dir(os.path.join(self.path, "cur"))
                _fsync_dir(os.path.join(self.path, "new"))
        except OSError as exc:
            raise MaildropError(f"cannot remove messages from {self.path}: {exc}") from exc
        marked = self._mark_seen(set(retrieved) - self._removed)
        if chosen or marked or self._unsaved is not None:
            # With deletions or renames cur/ has changed: its mtime describes nothing.
            changed = chosen or marked
            settled = self._unsaved[0] if self._unsaved is not None and not changed else None
            try:
                self._save(cur_mtime=settled)
            except OSError as exc:
                # The deletions are done and durable; the next open drops
                # the stale entries anyway, so this is not the client's failure.
                _log.warning("%s: uid list not rewritten: %s", self.path, exc)
        return len(chosen)

    @property
    def unsaved(self) -> bool:
        return self._unsaved is not None

    def _mark_seen(self, indexes: Collection[int]) -> int:
        """Add the ``S`` flag to the files of ``indexes`` that lack it (the
        Maildir "seen" flag, which Dovecot's POP3 sets on RETR too).  The
        rename is the retrieval's timestamp: it sets the file's ctime, which
        ``seen_before`` reads.  Returns how many files were renamed."""
        renamed = 0
        for index in sorted(indexes):
            for attempt in range(2):
                name = self._names[index]
                if name is None:
                    break  # gone
                base, _, flags = name.rpartition("/")[2].partition(_INFO)
                if "S" in flags:
                    break
                target = base + _INFO + "".join(sorted(flags + "S"))
                try:
                    os.rename(self._path_of(name), os.path.join(self.path, "cur", target))
                except FileNotFoundError:
                    if attempt == 0:
                        self._rescan()  # flags changed by another tool, or gone
                    continue
                except OSError as exc:
                    _log.warning("%s: cannot mark %s seen: %s", self.path, base, exc)
                    break
                self._names[index] = target
                renamed += 1
                break
        return renamed

    def seen_before(self, cutoff: float) -> list[int]:
        """Indexes of the messages marked seen (``S``) before ``cutoff``
        (seconds since the epoch, against the file's ctime: anything that
        touched the file since only makes it look younger)."""
        self._rescan()  # flags set by other tools count too
        found = []
        for index, name in enumerate(self._names):
            if name is None or index in self._removed:
                continue
            if "S" not in name.rpartition("/")[2].partition(_INFO)[2]:
                continue
            try:
                if os.stat(self._path_of(name)).st_ctime < cutoff:
                    found.append(index)
            except FileNotFoundError:
                continue
        return found

    def _unlink(self, index: int) -> None:
        for attempt in range(2):
            path = self._file(index)
            if path is None:
                return
            try:
                os.unlink(path)
                return
            except FileNotFoundError:
                if attempt == 0:
                    self._rescan()  # renamed by another tool, or really gone

    def close(self) -> None:
        try:
            if self._unsaved is not None and self._lock.held:
                self._lock.finishing()  # a new session of this process waits for us
                self._save(cur_mtime=self._unsaved[0])
        except OSError as exc:
            _log.warning("%s: uid list not written: %s", self.path, exc)
        finally:
            self._unsaved = None
            self._lock.release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the store ------------------------------------------------------------------


def _escape_hostname(hostname: str) -> str:
    # The Maildir spec escapes "/" and ":"; "," too, so that ",S=" and ",W="
    # stay unambiguous when names are parsed.
    return hostname.replace("/", r"\057").replace(":", r"\072").replace(",", r"\054")


class MaildirStore:
    """Maildir maildrops at ``location``, a ``{user}``/``{domain}`` template."""

    __slots__ = ("_hostname", "_template", "locks")

    def __init__(
        self, location: str, *, hostname: str | None = None, lock_file: str | None = None
    ) -> None:
        self._template = LocationTemplate(location)
        self.locks = MaildropLocks.for_path(
            lock_file or os.path.join(self._template.root, LOCKS_NAME)
        )
        host = socket.gethostname() if hostname is None else hostname
        if any(c <= " " or c == "\x7f" for c in host):
            raise ValueError(f"hostname must not contain spaces or control characters: {host!r}")
        self._hostname = _escape_hostname(host or "localhost")

    def maildir_path(self, user: str, domain: str) -> str:
        """The Maildir of ``user``@``domain``; ``InvalidName`` (a ValueError) if unsafe."""
        return self._template.expand(user=user, domain=domain)

    def open(self, user: str, domain: str) -> MaildirMaildrop:
        """Lock and snapshot the maildrop (see the module docstring)."""
        try:
            path = self.maildir_path(user, domain)
        except InvalidName as exc:
            raise MaildropUnavailable(str(exc), permanent=True) from exc
        try:
            if not os.path.isdir(os.path.join(path, "cur")):  # one stat when it exists
                _ensure_dirs(path)
        except OSError as exc:
            raise MaildropUnavailable(f"cannot open {path}: {exc}") from exc
        maildrop = MaildirMaildrop(path, self.locks.acquire(path, wait=_FINISHING_WAIT))
        try:
            with _no_gc():
                maildrop._load()
        except OSError as exc:
            maildrop.close()
            raise MaildropUnavailable(f"cannot read {path}: {exc}") from exc
        except BaseException:
            maildrop.close()
            raise
        return maildrop

    def _unique_name(self) -> str:
        now = time.time_ns() // 1000
        seconds, usec = divmod(now, 1_000_000)
        # Microseconds zero-padded: name order is then arrival order.
        return (
            f"{seconds}.M{usec:06d}P{os.getpid()}Q{next(_deliveries)}"
            f"R{secrets.token_hex(8)}.{self._hostname}"
        )

    def usage(self, user: str, domain: str) -> tuple[int, int]:
        """``(messages, octets)`` stored in ``cur/`` and ``new/``, for quotas.

        Octets are physical sizes: the ``,S=<n>`` field of a name when
        present (no stat), else ``stat``.  A missing Maildir is empty; a
        file removed during the scan is skipped.  Takes no lock: the answer
        is a snapshot that concurrent deliveries and sessions may change.
        ``InvalidName`` (a ValueError) for an unsafe name, ``OSError`` when
        a directory cannot be read.
        """
        path = self.maildir_path(user, domain)
        count = octets = 0
        for sub in ("cur", "new"):
            try:
                entries = os.scandir(os.path.join(path, sub))
            except FileNotFoundError:
                continue
            with entries:
                for entry in entries:
                    name = entry.name
                    if name[0] == "." or not entry.is_file(follow_symlinks=False):
                        continue
                    size = _name_physical_size(name.partition(":")[0])
                    if size is None:
                        try:
                            size = entry.stat(follow_symlinks=False).st_size
                        except FileNotFoundError:
                            continue
                    count += 1
                    octets += size
        return count, octets

    def deliver(self, user: str, domain: str, message: BinaryIO) -> str:
        try:
            path = self.maildir_path(user, domain)
        except InvalidName as exc:
            raise DeliveryError(str(exc), temporary=False) from exc
        unique = self._unique_name()
        tmp = os.path.join(path, "tmp", unique)
        final: str | None = None
        created = False
        try:
            _ensure_dirs(path)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600)
            created = True
            counter = _WireCounter()
            try:
                while chunk := message.read(_CHUNK):
                    counter.feed(chunk)
                    _write_all(fd, chunk)
                os.fsync(fd)
            finally:
                os.close(fd)
            name = f"{unique},S={counter.octets},W={counter.wire_size}"
            target = os.path.join(path, "new", name)
            try:
                os.link(tmp, target)  # unlike rename, never replaces a file
                linked = True
            except OSError as exc:
                if exc.errno not in _LINK_UNSUPPORTED:
                    raise
                os.rename(tmp, target)
                linked = False
            final = target
            if linked:
                os.unlink(tmp)
            created = False
            _fsync_dir(os.path.join(path, "new"))
        except BaseException as exc:
            if created:
                _unlink_quietly(tmp)
            if final is not None:
                _unlink_quietly(final)  # not durable, so not accepted: no duplicate on retry
            if isinstance(exc, OSError):
                raise DeliveryError(f"cannot deliver to {path}: {exc}", temporary=True) from exc
            raise
        return name
