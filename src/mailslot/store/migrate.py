"""Migration into a mailslot Maildir, keeping the POP3 UIDLs clients saw.

A POP3 client that "leaves mail on the server" remembers the UIDL of every
message it downloaded and fetches only UIDLs it has not seen.  A migration
that changes them makes every such client download the whole maildrop again.
So each importer reproduces, message by message, the UIDL the old server
sent, and hands it to ``maildir.import_uids`` verbatim.  A UIDL that cannot
be kept (not 1-70 characters in 0x21-0x7E, or a duplicate) gets a new one,
and the report says which message and why.

Theory of operation
-------------------

1. The source is read and checked first (``MigrationError`` for anything
   unreadable or in a format we do not know), before the target is touched.
2. The target Maildir is created if needed and its lock (taken in ``locks``,
   the store's lock table that POP3 sessions use) is held while messages are copied: a session
   cannot open the maildrop meanwhile, and ``MigrationError`` says so at once
   if one is open.  If it already holds messages the import is refused unless
   ``merge=True`` (see below): importing twice must not duplicate mail.
3. Every message is copied into ``tmp/`` (read once: the copy and the size as
   transmitted, RFC 1939 §11, are computed in the same pass) and fsynced.
   Still under the lock, each is linked into ``cur/`` (never replacing a file)
   and ``cur/`` is fsynced.
4. Still under the same lock, ``import_uids(..., lock=<the held lock>)`` writes
   the uid list: existing entries first, then the imported messages in the
   old server's order, each with its wire size.  No POP3 session can open the
   maildrop between the copy and the uid list, so none ever sees the new
   messages without their old UIDLs.  Any failure removes what was written.

``dry_run=True`` reads everything (sizes included) and writes nothing, not
even the target directories, and takes no lock.

``merge=True`` imports into a maildrop that already holds messages: they keep
their UIDLs and stay first; an imported message whose base name or UIDL is
already in the target is skipped as "already in the target", so a Maildir
import can be repeated.  An mbox message without a kept UIDL has no stable
identity: importing the same mbox twice duplicates those.

If ``source`` *is* the target Maildir (mailslot pointed at the old server's
maildirs), nothing is copied: only the uid list is written.  That is refused
when mailslot already served the maildrop (its uid list has entries), unless
``merge=True``, where mailslot's own UIDLs win.

Files are created with the caller's uid, mode 0600, in the target's
``tmp/`` and ``cur/``: run the import as the user mailslot runs as.

Dovecot Maildir (``import_dovecot_maildir``)
--------------------------------------------

What was relied on, read in dovecot/core (2.3):

* ``src/lib-storage/index/maildir/maildir-uidlist.c``: ``dovecot-uidlist``
  lives in the Maildir root (the control directory by default).  Version 3
  header ``3 V<uidvalidity> N<nextuid> G<guid> [<key><value>...]``; version
  1 header ``1 <uidvalidity> <nextuid>``.  Records ``<uid> [<key><value> ...]
  :<filename>``; extension keys are one letter A-Z, the filename follows the
  first ``:`` that starts a field (it may contain spaces) and is written up to
  the ``:2,`` info part, i.e. it is the *base name*.  UIDs must increase
  (Dovecot treats the file as broken otherwise); a file listed twice keeps
  the later UID.  A ``/`` in a filename or a zero uidvalidity/next uid is
  corruption: we refuse such a file rather than guess.
* ``maildir-uidlist.h``: record keys ``P`` (POP3 UIDL overriding the
  format), ``O`` (POP3 order: lower first, messages without one after them),
  ``G`` (GUID, default the base filename), ``S``/``W`` (sizes).  The header
  ``P`` key (a POP3 UIDL format) is defined but read by nothing: ignored.
* ``maildir-mail.c`` ``maildir_mail_get_special``: ``P`` with an empty value
  means "the base filename"; ``%f`` (``MAIL_FETCH_STORAGE_ID``) is the base
  filename; ``%g`` is ``G`` or else the base filename.
* ``src/pop3/pop3-commands.c`` ``pop3_get_uid``: the backend UIDL (``P``)
  wins, else ``pop3_uidl_format`` is expanded with ``%v``/``%{uidvalidity}``,
  ``%u``/``%{uid}``, ``%m``/``%{md5}``, ``%f``/``%{filename}``,
  ``%g``/``%{guid}``.  ``%m`` is the header MD5, which only the mbox storage
  provides (``index-mail.c`` returns "" for Maildir and Dovecot then fails the
  whole UIDL command): a Maildir message without ``P`` under a ``%m`` format
  never had a UIDL, so it gets a new one.  Messages are listed in POP3 order
  (``pop3-client.c`` ``pop3_sort_program``), i.e. by ``O`` then by uid.
* ``src/lib/var-expand.c`` (2.3): ``%[-][0][width][.[0][-]width]
  [modifiers]<key>``.  Modifiers ``L`` (lower), ``U`` (upper), ``E``
  (escape), ``X`` (the decimal value in *lower-case* hex: ``printf("%llx")``;
  a non-number becomes ``0``), ``R`` (reverse), ``M`` (MD5 hex), ``T`` (trim)
  apply in order; a zero-padded width pads on the left and never truncates, a
  plain width truncates.  There is no ``x`` modifier: ``%08xu`` is the unknown
  variable ``%x`` and fails in Dovecot too.  So the 2.3 default
  ``%08Xu%08Xv`` gives ``000000016553f100`` for uid 1, uidvalidity
  1700000000; a real Dovecot 2.3.19 was checked to answer exactly that
  (``tests/interop/test_dovecot_migration.py``).
* ``src/lib-var-expand/expansion-filter.c`` (2.4): the 2.4 syntax
  ``%{uid | hex(8)}`` is also understood (filters ``hex``, ``hex(n)`` --
  lower-case, zero-padded and cut to ``n`` digits -- ``lower``, ``upper``).
  Dovecot 2.3's own settings check refuses the long ``%{uid}`` forms in
  ``pop3_uidl_format`` ("Unknown pop3_uidl_format variable", seen with the
  real 2.3.19), so they only ever came from 2.4; we accept both.

LIST sizes may differ from Dovecot's by 2 for a message without a final
newline: Dovecot adds a CRLF on the wire but leaves it out of the size,
mailslot counts every octet it sends (RFC 1939 §11).  UIDLs are unaffected.

Files Dovecot had not listed yet (delivered after its last session) never had
a UIDL: they get new ones, after the listed messages.  Without a
``dovecot-uidlist`` Dovecot never listed the maildir -- or kept the file
elsewhere (``CONTROL=``); the report says so, and every message gets a new
UIDL.

Courier Maildir (``import_courier_maildir``)
--------------------------------------------

Read in svarshavchik/courier-libs ``imap/pop3dserver.C``:

* ``courierpop3dsizelist`` in the Maildir root: header ``/<version>
  <nextuid> <uidvalidity>`` (versions 2 and 3 are read; anything else makes
  Courier start over, so we refuse it), then ``<filename> <size>
  <uid>:<uidvalidity>[:<utf8>]`` per message, split at the last two spaces.
  Entries match files by base name.
* ``print_uidl``: the UIDL is ``UID<uid>-<uidvalidity>`` (``UID<uid>`` when
  the uidvalidity is 0).  Without a uid (old lists, and servers from before
  the size list) it is the base filename with octets outside 0x21-0x7E and
  ``'``, ``"``, ``+`` written as ``+XX`` (upper-case hex).  Without a size
  list we use that form for every message.
* Messages are sorted by the leading number of the file name (the delivery
  time), then by the name (``msglist::operator<``).  Courier ignores a final
  line without a newline and lines it cannot parse (the message then got a
  new UID at the next session: we give it a new UIDL and say so).

mbox (``import_mbox``)
----------------------

The file is read as mboxrd, streaming, one line (or 1 MiB piece of a longer
line) at a time: every line that starts with ``From `` starts a message and
is dropped, as is the empty line before it (and one at the end of the
file); ``>From ``, ``>>From `` ... at a line start lose one ``>``.  Headers
are kept exactly as they are (``Status:``, ``X-Status:``, ``X-UID:`` too).
The UIDL is the first ``X-UIDL:`` header when it is a valid POP3 UIDL (what
qpopper-era clients saw), else a new one.  A first message with an
``X-IMAP:`` header is the UW-IMAP/Dovecot "FOLDER INTERNAL DATA"
pseudo-message, which POP3 servers never showed: skipped.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import re
import secrets
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import BinaryIO, Final

from mailslot.store.base import MaildropBusy, MaildropError, MaildropUnavailable
from mailslot.store.locks import MaildropLock, MaildropLocks
from mailslot.store.maildir import (
    _delivery_order,
    _escape_hostname,
    _fsync_dir,
    _read_uidlist,
    _scan,
    _unlink_quietly,
    _write_all,
    import_uids,
)
from mailslot.wire import wire_size

__all__ = [
    "DEFAULT_DOVECOT_UIDL_FORMAT",
    "ImportReport",
    "MigrationError",
    "expand_uidl_format",
    "import_courier_maildir",
    "import_dovecot_maildir",
    "import_mbox",
]

DEFAULT_DOVECOT_UIDL_FORMAT: Final = "%08Xu%08Xv"
DOVECOT_UIDLIST: Final = "dovecot-uidlist"
COURIER_SIZELIST: Final = "courierpop3dsizelist"

_CHUNK: Final = 1 << 20
_UIDL_MAX: Final = 70
_INFO: Final = ":2,"
_OPEN_FLAGS: Final = os.O_CLOEXEC | os.O_NOFOLLOW
_LINK_UNSUPPORTED: Final = frozenset({errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP})
_ADDED_W: Final = re.compile(r",W=\d+$")
_NO_ORDER: Final = 1 << 32  # after every Dovecot POP3 order number (uint32)


class MigrationError(Exception):
    """The import cannot be done (or was undone): the message says why."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportReport:
    """What an import did (or, with ``dry_run``, would do).

    ``messages`` were imported, ``octets`` is the sum of their sizes as
    transmitted; ``uidls_kept + uidls_new == messages``.  ``skipped`` has one
    line per message that was not imported or whose old UIDL could not be
    kept, and per notable condition of the source: names and reasons, never
    message content.
    """

    source: str
    messages: int
    octets: int
    uidls_kept: int
    uidls_new: int
    skipped: list[str]


def _valid_uidl(uidl: str) -> bool:
    """RFC 1939 §7: 1 to 70 characters in the range 0x21 to 0x7E."""
    return 0 < len(uidl) <= _UIDL_MAX and all("!" <= c <= "~" for c in uidl)


# --- pop3_uidl_format ---------------------------------------------------------

_SHORT_VARS: Final = {"u": "uid", "v": "uidvalidity", "m": "md5", "f": "filename", "g": "guid"}
_LONG_VARS: Final = frozenset(_SHORT_VARS.values())
_DOVECOT_MODIFIERS: Final = "LUEXRHNMDT"  # var-expand.c; H, N and D are refused
_MAX_MODIFIERS: Final = 10
_FILTER: Final = re.compile(r"([a-z]+)(?:\(\s*(-?\d+)?\s*\))?")


def _decimal_to_hex(value: str) -> str:
    # str_to_ullong: decimal digits only, else 0; printf("%llx").
    number = int(value) if value.isascii() and value.isdigit() else 0
    return f"{number:x}" if number < 1 << 64 else "0"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'")


_MODIFIER_FUNCS: Final[dict[str, Callable[[str], str]]] = {
    "L": str.lower,
    "U": str.upper,
    "E": _escape,
    "X": _decimal_to_hex,
    "R": lambda value: value[::-1],
    "M": lambda value: hashlib.md5(value.encode(), usedforsecurity=False).hexdigest(),
    "T": str.rstrip,
}


@dataclass(frozen=True, slots=True)
class _Variable:
    name: str
    modifiers: str = ""
    offset: int = 0
    width: int = 0
    zero_pad: bool = False
    filters: tuple[tuple[str, int | None], ...] = ()


def _hex_filter(value: str, width: int | None) -> str:
    # 2.4 fn_hex: the input must be a number; lower-case; zero-padded and cut
    # to the last `width` digits (a negative width pads and cuts on the right).
    if not (value.isascii() and value.isdigit()):
        raise ValueError(f"hex filter: {value!r} is not a number")
    digits = f"{int(value):x}"
    if not width:
        return digits
    if width < 0:
        return digits.ljust(-width, "0")[:-width]
    return digits.rjust(width, "0")[-width:]


class _UidlTemplate:
    """A parsed ``pop3_uidl_format``; ``expand`` fills in one message."""

    __slots__ = ("_pieces", "uses")

    def __init__(self, fmt: str) -> None:
        self._pieces: list[str | _Variable] = []
        self.uses: frozenset[str] = frozenset()
        self._parse(fmt)
        if not self._pieces:
            raise ValueError("empty pop3_uidl_format")

    def _parse(self, fmt: str) -> None:
        text: list[str] = []
        uses: set[str] = set()
        i, end = 0, len(fmt)

        def digits() -> int:
            nonlocal i
            start = i
            while i < end and "0" <= fmt[i] <= "9":
                i += 1
            return int(fmt[start:i] or "0")

        while i < end:
            if fmt[i] != "%":
                text.append(fmt[i])
                i += 1
                continue
            i += 1
            sign, zero_pad, offset = 1, False, 0
            if i < end and fmt[i] == "-":
                sign, i = -1, i + 1
            if i < end and fmt[i] == "0":
                zero_pad, i = True, i + 1
            width = digits()
            if i < end and fmt[i] == ".":
                offset, sign, zero_pad, i = sign * width, 1, False, i + 1
                if i < end and fmt[i] == "0":
                    zero_pad, i = True, i + 1
                if i < end and fmt[i] == "-":
                    sign, i = -1, i + 1
                width = sign * digits()
            modifiers = ""
            while i < end and len(modifiers) < _MAX_MODIFIERS and fmt[i] in _DOVECOT_MODIFIERS:
                if fmt[i] not in _MODIFIER_FUNCS:
                    raise ValueError(f"pop3_uidl_format modifier %{fmt[i]} is not supported")
                modifiers += fmt[i]
                i += 1
            if i >= end:
                break  # a dangling "%": Dovecot drops it too
            filters: tuple[tuple[str, int | None], ...] = ()
            if fmt[i] == "{":
                close = fmt.find("}", i)
                if close < 0:
                    raise ValueError(f"unbalanced braces in pop3_uidl_format {fmt!r}")
                name, filters = self._long_key(fmt[i + 1 : close])
                i = close + 1
            elif fmt[i] == "%":
                text.append("%")
                i += 1
                continue
            elif fmt[i] in _SHORT_VARS:
                name = _SHORT_VARS[fmt[i]]
                i += 1
            else:
                raise ValueError(f"unknown variable %{fmt[i]} in pop3_uidl_format {fmt!r}")
            if text:
                self._pieces.append("".join(text))
                text.clear()
            uses.add(name)
            self._pieces.append(_Variable(name, modifiers, offset, width, zero_pad, filters))
        if text:
            self._pieces.append("".join(text))
        self.uses = frozenset(uses)

    @staticmethod
    def _long_key(key: str) -> tuple[str, tuple[tuple[str, int | None], ...]]:
        parts = [part.strip() for part in key.split("|")]
        name = parts[0]
        if name not in _LONG_VARS:
            raise ValueError(f"unknown variable %{{{name}}} in pop3_uidl_format")
        filters: list[tuple[str, int | None]] = []
        for part in parts[1:]:
            match = _FILTER.fullmatch(part)
            if match is None or match[1] not in ("hex", "lower", "upper"):
                raise ValueError(f"pop3_uidl_format filter {part!r} is not supported")
            if match[2] is not None and match[1] != "hex":
                raise ValueError(f"pop3_uidl_format filter {part!r} takes no argument")
            filters.append((match[1], int(match[2]) if match[2] is not None else None))
        return name, tuple(filters)

    def expand(self, values: Mapping[str, str]) -> str:
        out: list[str] = []
        for piece in self._pieces:
            if isinstance(piece, str):
                out.append(piece)
                continue
            value = values[piece.name]
            for modifier in piece.modifiers:
                value = _MODIFIER_FUNCS[modifier](value)
            for name, argument in piece.filters:
                if name == "hex":
                    value = _hex_filter(value, argument)
                else:
                    value = value.lower() if name == "lower" else value.upper()
            if piece.offset < 0:
                if len(value) > -piece.offset:
                    value = value[len(value) + piece.offset :]
            elif piece.offset > 0:
                value = value[piece.offset :]
            width = piece.width
            if width and piece.zero_pad:
                value = value.rjust(width, "0")  # pads, never truncates
            elif width > 0:
                value = value[:width]
            elif width < 0 and len(value) + width >= 0:
                value = value[: len(value) + width]
            out.append(value)
        return "".join(out)


def expand_uidl_format(
    fmt: str,
    *,
    uid: int,
    uidvalidity: int,
    filename: str = "",
    guid: str = "",
    md5: str | None = None,
) -> str:
    """Expand a Dovecot ``pop3_uidl_format`` for one message, as Dovecot did.

    ``filename`` is the Maildir base name, ``guid`` defaults to it, ``md5``
    is the header MD5 in hex.  ``ValueError`` for a format Dovecot would
    reject or we do not support, and for ``%m`` without ``md5``.
    """
    template = _UidlTemplate(fmt)
    if "md5" in template.uses and md5 is None:
        raise ValueError("pop3_uidl_format uses %m but no header MD5 was given")
    return template.expand(
        {
            "uid": str(uid),
            "uidvalidity": str(uidvalidity),
            "filename": filename,
            "guid": guid or filename,
            "md5": md5 or "",
        }
    )


# --- small filesystem helpers -------------------------------------------------


def _scan_maildir(maildir: str) -> dict[str, str]:
    """Messages of ``cur/`` and ``new/`` as {base name: "cur/<name>" or "new/<name>"}."""
    found = {base: "cur/" + name for base, name in _scan(os.path.join(maildir, "cur")).items()}
    for base, name in _scan(os.path.join(maildir, "new")).items():
        found.setdefault(base, "new/" + name)
    return found


def _source_maildir(source: Path) -> str:
    path = os.path.abspath(source)
    if not os.path.isdir(path):
        raise MigrationError(f"{path} is not a directory")
    if not any(os.path.isdir(os.path.join(path, sub)) for sub in ("cur", "new")):
        raise MigrationError(f"{path} is not a Maildir (no cur/ or new/)")
    return path


def _note_folders(maildir: str, skipped: list[str]) -> None:
    """Maildir++ subfolders are not POP3's: say they stay behind."""
    with os.scandir(maildir) as entries:
        folders = sorted(
            entry.name
            for entry in entries
            if entry.name.startswith(".")
            and entry.is_dir(follow_symlinks=False)
            and os.path.isdir(os.path.join(entry.path, "cur"))
        )
    if folders:
        shown = ", ".join(folders[:5]) + (", ..." if len(folders) > 5 else "")
        skipped.append(
            f"{len(folders)} Maildir++ folder(s) not imported, POP3 serves only INBOX: {shown}"
        )


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as file:
            return file.read().decode("utf-8", "surrogateescape")
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MigrationError(f"cannot read {path}: {exc.strerror}") from exc


def _hostname() -> str:
    host = socket.gethostname() or "localhost"
    return _escape_hostname("".join(c if "!" <= c <= "~" else "_" for c in host))


# --- what is imported ---------------------------------------------------------


@dataclass(slots=True)
class _Item:
    """One message of a Maildir source, in the old server's order."""

    label: str  # names the message in reasons: never content
    base: str  # its base name, kept in the target
    name: str  # "cur/<file>" or "new/<file>" in the source
    uidl: str | None  # the UIDL clients saw; None: it never had one
    problem: str | None = None  # why that UIDL is unknown, if it is


Row = tuple[str, int | None, str]


class _Uidls:
    """Hands out UIDLs: the old one when valid and unique, else a new one.

    New UIDLs are ``<n>.m<12 hex digits>``, the random part drawn once per
    import.  mailslot's own are ``<n>.<validity>`` with a validity made of
    hex digits only, so the two never collide, and two imports never do.
    """

    __slots__ = ("_next", "_taken", "_token", "kept", "new")

    def __init__(self, taken: Iterable[str]) -> None:
        self._taken = set(taken)
        self._token = "m" + secrets.token_hex(6)
        self._next = 1
        self.kept = 0
        self.new = 0

    def assign(self, label: str, uidl: str | None, problem: str | None, skipped: list[str]) -> str:
        if problem is not None:
            skipped.append(f"{label}: {problem}; new UIDL")
        elif uidl is not None:
            if not _valid_uidl(uidl):
                skipped.append(
                    f"{label}: its UIDL is not a valid POP3 UIDL "
                    f"(1-70 characters 0x21-0x7E); new UIDL"
                )
            elif uidl in self._taken:
                skipped.append(f"{label}: its UIDL duplicates an earlier message's; new UIDL")
            else:
                self._taken.add(uidl)
                self.kept += 1
                return uidl
        while True:
            fresh = f"{self._next}.{self._token}"
            self._next += 1
            if fresh not in self._taken:
                self._taken.add(fresh)
                self.new += 1
                return fresh


def _read_mailslot_rows(maildir: str) -> list[Row]:
    """The entries of the target's own uid list, read as ``maildir`` reads it."""
    try:
        uidlist = _read_uidlist(maildir)
    except MaildropUnavailable as exc:  # written by a newer mailslot
        raise MigrationError(str(exc)) from None
    rows: list[Row] = []
    uids: set[str] = set()
    for base, (uid, size) in uidlist.entries().items():
        if uid not in uids and base and base[0] != "." and not any(c in base for c in "/\r"):
            uids.add(uid)
            rows.append((uid, size, base))
    return rows


# --- the target ---------------------------------------------------------------


@dataclass(slots=True)
class _Staged:
    tmp: str
    final: str  # file name in cur/


class _Target:
    """The target Maildir: its lock, what it holds, and the files staged for it."""

    def __init__(
        self,
        target: Path,
        *,
        locks: MaildropLocks,
        source: str | None,
        dry_run: bool,
        merge: bool,
    ) -> None:
        self.path = os.path.abspath(target)
        self._locks = locks
        self.in_place = source is not None and os.path.realpath(source) == os.path.realpath(
            self.path
        )
        self.dry_run = dry_run
        self.merge = merge
        self.rows: list[Row] = []  # existing entries to keep, first
        self.taken_bases: set[str] = set()
        self.taken_stems: set[str] = set()
        self.staged: list[_Staged] = []
        self._lock: MaildropLock | None = None
        self._linked: list[str] = []
        self._host = _hostname()
        self._count = 0

    def __enter__(self) -> _Target:
        if not self.dry_run:
            try:
                os.makedirs(self.path, 0o700, exist_ok=True)
                for sub in ("cur", "new", "tmp"):
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(os.path.join(self.path, sub), 0o700)
                self._lock = self._locks.acquire(self.path)
            except MaildropBusy:
                raise MigrationError(
                    f"{self.path} is in use by a POP3 session: try again when it has ended"
                ) from None
            except (OSError, MaildropError) as exc:
                raise MigrationError(f"cannot prepare {self.path}: {exc}") from exc
        try:
            self._inspect()
        except BaseException:
            self._unlock()
            raise
        return self

    def _inspect(self) -> None:
        try:
            present = set(_scan_maildir(self.path))
        except OSError as exc:
            raise MigrationError(f"cannot list {self.path}: {exc.strerror}") from exc
        self.rows = [row for row in _read_mailslot_rows(self.path) if row[2] in present]
        if self.in_place:
            # Every file is a source message; only mailslot's own entries count.
            self.taken_bases = {base for _uid, _size, base in self.rows}
        else:
            self.taken_bases = present
        # What an earlier import named "<base>,W=<n>" came from "<base>".
        self.taken_stems = {_ADDED_W.sub("", base) for base in self.taken_bases}
        if self.taken_bases and not self.merge:
            what = "mailslot already served it" if self.in_place else "it already holds messages"
            raise MigrationError(
                f"{self.path}: {what}; importing again would duplicate mail (merge=True adds to it)"
            )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        for staged in self.staged:
            _unlink_quietly(staged.tmp)
        self.staged.clear()
        self._unlock()

    def _unlock(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def _held(self) -> MaildropLock:
        if self._lock is None:
            raise MaildropError("the target is not locked")
        return self._lock

    def taken_uids(self) -> set[str]:
        return {uid for uid, _size, _base in self.rows}

    def _create(self) -> tuple[int, str]:
        self._count += 1
        name = f"{time.time_ns()}.P{os.getpid()}Q{self._count}R{secrets.token_hex(4)}.import"
        path = os.path.join(self.path, "tmp", name)
        return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _OPEN_FLAGS, 0o600), path

    def copy(self, chunks: Iterable[bytes]) -> tuple[str | None, int, int]:
        """Write ``chunks`` to a new file in ``tmp/`` (not in a dry run):
        ``(tmp path, octets, wire size)``."""
        octets = 0
        if self.dry_run:

            def counted() -> Iterator[bytes]:
                nonlocal octets
                for chunk in chunks:
                    octets += len(chunk)
                    yield chunk

            return None, octets, wire_size(counted())
        fd, tmp = self._create()
        try:
            try:

                def written() -> Iterator[bytes]:
                    nonlocal octets
                    for chunk in chunks:
                        _write_all(fd, chunk)
                        octets += len(chunk)
                        yield chunk

                wire = wire_size(written())
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            _unlink_quietly(tmp)
            raise
        return tmp, octets, wire

    def stage(self, tmp: str | None, final: str) -> None:
        if tmp is not None:
            self.staged.append(_Staged(tmp, final))

    def unique_base(self, index: int, start_us: int) -> str:
        seconds, usec = divmod(start_us + index, 1_000_000)
        return f"{seconds}.M{usec}P{os.getpid()}Q{index}R{secrets.token_hex(4)}.{self._host}"

    def commit(self, rows: Sequence[Row]) -> None:
        """Link the staged files into ``cur/``, then write the uid list."""
        if self.dry_run:
            return
        cur = os.path.join(self.path, "cur")
        try:
            for staged in self.staged:
                target = os.path.join(cur, staged.final)
                try:
                    os.link(staged.tmp, target)  # never replaces a file
                except OSError as exc:
                    if exc.errno not in _LINK_UNSUPPORTED:
                        raise
                    if os.path.lexists(target):
                        raise FileExistsError(errno.EEXIST, "file exists", target) from exc
                    os.rename(staged.tmp, target)
                self._linked.append(target)
                _unlink_quietly(staged.tmp)
            self.staged.clear()
            if self._linked:
                _fsync_dir(cur)
                _fsync_dir(os.path.join(self.path, "tmp"))
        except OSError as exc:
            self._roll_back()
            raise MigrationError(f"cannot move messages into {cur}: {exc}") from exc
        try:
            import_uids(self.path, [*self.rows, *rows], lock=self._held())
        except (OSError, MaildropError) as exc:
            self._roll_back()
            raise MigrationError(f"cannot write the uid list of {self.path}: {exc}") from exc
        except BaseException:
            self._roll_back()
            raise

    def _roll_back(self) -> None:
        for path in self._linked:
            _unlink_quietly(path)
        if self._linked:
            with contextlib.suppress(OSError):
                _fsync_dir(os.path.join(self.path, "cur"))
        self._linked.clear()


def _file_chunks(path: str) -> Iterator[bytes]:
    fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    with open(fd, "rb", buffering=0) as file:
        while chunk := file.read(_CHUNK):
            yield chunk


def _import_maildir(
    source: Path, src: str, target: _Target, items: list[_Item], skipped: list[str]
) -> ImportReport:
    """Copy ``items`` (in order) into ``target`` and write their UIDLs."""
    existing = target.taken_uids()  # empty unless merging
    uidls = _Uidls(existing)
    rows: list[Row] = []
    octets = 0
    for item in items:
        if any(c in item.base for c in "\n\r"):
            skipped.append(f"{item.label}: skipped, a line end in its file name")
            continue
        if item.base in target.taken_bases or item.base in target.taken_stems:
            skipped.append(f"{item.label}: skipped, already in the target")
            continue
        if item.uidl is not None and item.uidl in existing:
            skipped.append(f"{item.label}: skipped, its UIDL is already in the target")
            continue
        path = os.path.join(src, item.name)
        base = item.base
        try:
            if target.in_place:
                tmp, wire = None, wire_size(_file_chunks(path))
            else:
                tmp, _size, wire = target.copy(_file_chunks(path))
        except FileNotFoundError:
            skipped.append(f"{item.label}: skipped, its file vanished during the import")
            continue
        except OSError as exc:
            raise MigrationError(f"cannot copy {path}: {exc.strerror}") from exc
        if not target.in_place and ",W=" not in base:
            base += f",W={wire}"
        info = item.name[4:].partition(":")
        target.stage(tmp, base + (info[1] + info[2] if info[1] else _INFO))
        uid = uidls.assign(item.label, item.uidl, item.problem, skipped)
        rows.append((uid, wire, base))
        octets += wire
    target.commit(rows)
    return ImportReport(
        source=str(source),
        messages=len(rows),
        octets=octets,
        uidls_kept=uidls.kept,
        uidls_new=uidls.new,
        skipped=skipped,
    )


# --- Dovecot ------------------------------------------------------------------


@dataclass(slots=True)
class _DovecotRecord:
    uid: int
    fields: dict[str, str]
    base: str


@dataclass(slots=True)
class _DovecotUidlist:
    validity: int
    next_uid: int
    records: list[_DovecotRecord] = field(default_factory=list)


def _parse_dovecot_uidlist(text: str, path: str) -> _DovecotUidlist:
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    header = lines[0] if lines else ""
    if len(header) < 2 or not header[0].isdigit() or header[1] != " ":
        raise MigrationError(f"{path}: not a dovecot-uidlist (bad header)")
    version = int(header[0])
    validity = next_uid = 0
    if version == 1:
        numbers = header[2:].split()
        if len(numbers) < 2 or not all(n.isascii() and n.isdigit() for n in numbers[:2]):
            raise MigrationError(f"{path}: bad version 1 header")
        validity, next_uid = int(numbers[0]), int(numbers[1])
    elif version == 3:
        for token in header[2:].split(" "):
            if not token:
                continue
            key, value = token[0], token[1:]
            if key in "VN":
                if not (value.isascii() and value.isdigit()):
                    raise MigrationError(f"{path}: bad {key} field in the header")
                if key == "V":
                    validity = int(value)
                else:
                    next_uid = int(value)
    else:
        raise MigrationError(f"{path}: dovecot-uidlist version {version} is not supported")
    if not validity or not next_uid:
        raise MigrationError(f"{path}: broken header (no uidvalidity or next uid)")
    uidlist = _DovecotUidlist(validity, next_uid)
    by_base: dict[str, _DovecotRecord] = {}
    previous = 0
    for number, line in enumerate(lines[1:], start=2):
        digits = len(line) - len(line.lstrip("0123456789"))
        uid = int(line[:digits]) if digits else 0
        if uid == 0 or line[digits : digits + 1] != " ":
            raise MigrationError(f"{path} line {number}: invalid record")
        if uid <= previous:
            raise MigrationError(f"{path} line {number}: uids not in ascending order")
        if uid >= 1 << 32:
            raise MigrationError(f"{path} line {number}: uid too large")
        previous = uid
        rest = line[digits:].lstrip(" ")
        fields: dict[str, str] = {}
        if version == 3:
            while rest and rest[0] != ":":
                token, _, rest = rest.partition(" ")
                if "A" <= token[0] <= "Z":
                    fields.setdefault(token[0], token[1:])
                rest = rest.lstrip(" ")
            rest = rest[1:]
        if not rest or "/" in rest:
            raise MigrationError(f"{path} line {number}: invalid file name")
        record = _DovecotRecord(uid, fields, rest.partition(":")[0])
        replaced = by_base.pop(record.base, None)
        if replaced is not None:  # listed twice: Dovecot keeps the later uid
            uidlist.records.remove(replaced)
        by_base[record.base] = record
        uidlist.records.append(record)
    return uidlist


def _dovecot_uidl(
    record: _DovecotRecord, validity: int, template: _UidlTemplate
) -> tuple[str | None, str | None]:
    saved = record.fields.get("P")
    if saved is not None:
        return (saved or record.base), None  # "P" alone: the base file name
    if "md5" in template.uses:
        return None, (
            "pop3_uidl_format uses %m (header MD5), which Dovecot's Maildir storage "
            "never provided, so Dovecot listed no UIDL for it"
        )
    values = {
        "uid": str(record.uid),
        "uidvalidity": str(validity),
        "filename": record.base,
        "guid": record.fields.get("G") or record.base,
        "md5": "",
    }
    try:
        return template.expand(values), None
    except ValueError as exc:
        return None, f"pop3_uidl_format cannot be expanded ({exc})"


def _dovecot_items(
    uidlist: _DovecotUidlist | None,
    files: dict[str, str],
    template: _UidlTemplate,
    skipped: list[str],
) -> list[_Item]:
    if uidlist is None:
        if files:
            skipped.append(
                f"no {DOVECOT_UIDLIST}: Dovecot never listed these messages (or kept the "
                f"file elsewhere, CONTROL=); all of them get new UIDLs"
            )
        return [_Item(base, base, files[base], None) for base in sorted(files, key=_delivery_order)]
    listed: list[tuple[int, int, _DovecotRecord, str]] = []
    for record in uidlist.records:
        name = files.pop(record.base, None)
        if name is None:
            continue  # expunged
        order = record.fields.get("O", "")
        rank = int(order) if order.isascii() and order.isdigit() else _NO_ORDER
        listed.append((min(rank, _NO_ORDER), record.uid, record, name))
    listed.sort(key=lambda entry: (entry[0], entry[1]))
    items: list[_Item] = []
    for _rank, uid, record, name in listed:
        uidl, problem = _dovecot_uidl(record, uidlist.validity, template)
        items.append(_Item(f"uid {uid} ({record.base})", record.base, name, uidl, problem))
    items.extend(
        _Item(base, base, files[base], None) for base in sorted(files, key=_delivery_order)
    )
    return items


def import_dovecot_maildir(
    source: Path,
    target_maildir: Path,
    *,
    locks: MaildropLocks,
    uidl_format: str = DEFAULT_DOVECOT_UIDL_FORMAT,
    dry_run: bool = False,
    merge: bool = False,
) -> ImportReport:
    """Import the INBOX Maildir ``source`` that Dovecot served, with the UIDLs
    Dovecot listed under ``uidl_format`` (its ``pop3_uidl_format``) or saved
    in ``dovecot-uidlist``.  See the module docstring."""
    try:
        template = _UidlTemplate(uidl_format)
    except ValueError as exc:
        raise MigrationError(str(exc)) from None
    src = _source_maildir(source)
    path = os.path.join(src, DOVECOT_UIDLIST)
    text = _read_text(path)
    # An empty file is one Dovecot would discard and rebuild: no UIDL came from it.
    uidlist = None if not text or text.isspace() else _parse_dovecot_uidlist(text, path)
    with _Target(target_maildir, locks=locks, source=src, dry_run=dry_run, merge=merge) as target:
        skipped: list[str] = []
        _note_folders(src, skipped)
        items = _dovecot_items(uidlist, _scan_maildir(src), template, skipped)
        return _import_maildir(source, src, target, items, skipped)


# --- Courier ------------------------------------------------------------------

_COURIER_HEADER: Final = re.compile(rb"/(\d+) (\d+)(?: (\d+))?")
_COURIER_SIZE: Final = re.compile(rb"(\d+) (\d+):(\d+)(?::-?\d+)?")
_COURIER_SAFE: Final = frozenset(range(0x21, 0x7F)) - {ord("'"), ord('"'), ord("+")}
_LEADING_NUMBER: Final = re.compile(rb"\s*([+-]?\d+)")


def _courier_filename_uidl(base: str) -> str:
    raw = os.fsencode(base)
    return "".join(chr(b) if b in _COURIER_SAFE else f"+{b:02X}" for b in raw)


def _courier_order(base: str) -> tuple[int, bytes]:
    raw = os.fsencode(base)
    match = _LEADING_NUMBER.match(raw)
    return (int(match[1]) if match else 0, raw)


def _read_courier_sizelist(path: str, skipped: list[str]) -> dict[str, tuple[int, int]] | None:
    """{base name: (uid, uidvalidity)}, or None without a size list."""
    try:
        with open(path, "rb") as file:
            data = file.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise MigrationError(f"cannot read {path}: {exc.strerror}") from exc
    if not data.strip():
        return None  # Courier treats it as missing
    lines = data.split(b"\n")
    header = _COURIER_HEADER.match(lines[0])
    if header is None or int(header[1]) not in (2, 3):
        raise MigrationError(
            f"{path}: not a courierpop3dsizelist of version 2 or 3; Courier would have "
            f"given every message a new UIDL at the next login, so its UIDLs are unknown"
        )
    entries: dict[str, tuple[int, int]] = {}
    for number, line in enumerate(lines[1:-1], start=2):  # Courier ignores a partial last line
        last = line.rfind(b" ")
        before = line.rfind(b" ", 0, last) if last > 0 else -1
        sizes = _COURIER_SIZE.fullmatch(line[before + 1 :]) if before > 0 else None
        if sizes is None:
            if line:
                skipped.append(f"{COURIER_SIZELIST} line {number}: unreadable, ignored")
            continue
        base = os.fsdecode(line[:before]).partition(":")[0]
        entries.setdefault(base, (int(sizes[2]), int(sizes[3])))
    return entries


def import_courier_maildir(
    source: Path,
    target_maildir: Path,
    *,
    locks: MaildropLocks,
    dry_run: bool = False,
    merge: bool = False,
) -> ImportReport:
    """Import the Maildir ``source`` that Courier's pop3d served, with the
    UIDLs it listed (from ``courierpop3dsizelist``).  See the module
    docstring."""
    src = _source_maildir(source)
    skipped: list[str] = []
    sizelist = _read_courier_sizelist(os.path.join(src, COURIER_SIZELIST), skipped)
    with _Target(target_maildir, locks=locks, source=src, dry_run=dry_run, merge=merge) as target:
        _note_folders(src, skipped)
        files = _scan_maildir(src)
        items: list[_Item] = []
        for base in sorted(files, key=_courier_order):
            if sizelist is None:
                uidl: str | None = _courier_filename_uidl(base)
            elif base in sizelist:
                uid, validity = sizelist[base]
                if uid == 0:
                    uidl = _courier_filename_uidl(base)
                else:
                    uidl = f"UID{uid}-{validity}" if validity else f"UID{uid}"
            else:
                uidl = None  # arrived after Courier's last session
            items.append(_Item(base, base, files[base], uidl))
        return _import_maildir(source, src, target, items, skipped)


# --- mbox ---------------------------------------------------------------------

_QUOTED_FROM: Final = re.compile(rb">+From ")
_BLANK: Final = (b"\n", b"\r\n")


class _MboxReader:
    """An mboxrd file, one message at a time, one line (or piece) at a time.

    ``next_message`` skips the ``From `` line of the next message;
    ``content`` then yields that message's text and must be exhausted before
    the next ``next_message``.
    """

    __slots__ = ("_file", "_piece", "x_imap", "x_uidl")

    def __init__(self, file: BinaryIO, path: str) -> None:
        self._file = file
        self._piece = self._read()
        self.x_uidl: bytes | None = None
        self.x_imap = False
        if self._piece and not self._piece.startswith(b"From "):
            raise MigrationError(f"{path} is not an mbox: it does not start with 'From '")

    def _read(self) -> bytes:
        return self._file.readline(_CHUNK)

    def next_message(self) -> bool:
        piece = self._piece
        if not piece:
            return False
        while piece and not piece.endswith(b"\n"):  # a separator longer than a piece
            piece = self._read()
        self._piece = self._read()
        self.x_uidl = None
        self.x_imap = False
        return True

    def content(self) -> Iterator[bytes]:
        in_headers = True
        at_start = True
        held: bytes | None = None  # an empty line: the separator's, if a "From " follows
        while True:
            piece = self._piece
            if not piece or (at_start and piece.startswith(b"From ")):
                return  # the held empty line belongs to the separator (or the end)
            self._piece = self._read()
            if at_start:
                if held is not None:
                    yield held
                    held = None
                if piece in _BLANK:
                    in_headers = False
                    held = piece
                    continue
                if in_headers:
                    name = piece[:7].lower()
                    if name == b"x-uidl:" and self.x_uidl is None:
                        self.x_uidl = piece[7:].strip()
                    elif name == b"x-imap:":
                        self.x_imap = True
                if piece[:1] == b">" and _QUOTED_FROM.match(piece):
                    piece = piece[1:]
            at_start = piece.endswith(b"\n")
            yield piece


def import_mbox(
    source: Path,
    target_maildir: Path,
    *,
    locks: MaildropLocks,
    dry_run: bool = False,
    merge: bool = False,
) -> ImportReport:
    """Import the mbox file ``source``, keeping valid ``X-UIDL`` headers as
    UIDLs.  See the module docstring."""
    path = os.path.abspath(source)
    try:
        file = open(path, "rb")  # noqa: SIM115 -- closed by the with below
    except OSError as exc:
        raise MigrationError(f"cannot read {path}: {exc.strerror}") from exc
    with file:
        try:
            reader = _MboxReader(file, path)  # checks the source before the target is touched
        except OSError as exc:
            raise MigrationError(f"cannot read {path}: {exc.strerror}") from exc
        return _import_mbox(
            source, reader, target_maildir, locks=locks, dry_run=dry_run, merge=merge
        )


def _import_mbox(
    source: Path,
    reader: _MboxReader,
    target_maildir: Path,
    *,
    locks: MaildropLocks,
    dry_run: bool,
    merge: bool,
) -> ImportReport:
    with _Target(target_maildir, locks=locks, source=None, dry_run=dry_run, merge=merge) as target:
        skipped: list[str] = []
        existing = target.taken_uids()
        uidls = _Uidls(existing)
        rows: list[Row] = []
        octets = 0
        start_us = time.time_ns() // 1000
        number = 0
        while reader.next_message():
            number += 1
            try:
                tmp, size, wire = target.copy(reader.content())
            except OSError as exc:
                raise MigrationError(f"cannot import {source} into {target.path}: {exc}") from exc
            label = f"message {number}"
            if number == 1 and reader.x_imap:
                if tmp is not None:
                    _unlink_quietly(tmp)
                skipped.append(f"{label}: skipped, the mbox's FOLDER INTERNAL DATA pseudo-message")
                continue
            uidl: str | None = None
            problem: str | None = None
            if reader.x_uidl is not None:
                try:
                    uidl = reader.x_uidl.decode("ascii")
                except UnicodeDecodeError:
                    problem = "its X-UIDL is not a valid POP3 UIDL"
            if uidl is not None and uidl in existing:
                if tmp is not None:
                    _unlink_quietly(tmp)
                skipped.append(f"{label}: skipped, its UIDL is already in the target")
                continue
            base = f"{target.unique_base(number, start_us)},S={size},W={wire}"
            target.stage(tmp, base + _INFO)
            rows.append((uidls.assign(label, uidl, problem, skipped), wire, base))
            octets += wire
        target.commit(rows)
    return ImportReport(
        source=str(source),
        messages=len(rows),
        octets=octets,
        uidls_kept=uidls.kept,
        uidls_new=uidls.new,
        skipped=skipped,
    )
