"""Maildrop locks that cost no file descriptor per held lock.

A POP3 session holds its maildrop's lock for as long as it is open, which for
an idle client is minutes.  A lock file per maildrop, held open, would cost a
descriptor per session on top of the socket: 10,000 idle sessions would need
20,000 descriptors.  Instead every maildrop of a store is locked in one shared
file, ``mailslot.locks`` at the root of the mail location:

* Each maildrop owns one byte of that file, at an offset taken from a
  hash of its path (BLAKE2b, 62 bits).  Two maildrops share a byte with a
  probability of about n²/2⁶³ — for a million maildrops, one in ten million —
  and the only effect would be a spurious ``[IN-USE]``.
* Between processes, the byte is held with a POSIX record lock (``lockf``):
  the kernel drops it when the process dies, on a local disk and over NFS.
* Within a process, record locks never conflict, so a table of held offsets,
  under a mutex, decides between sessions and threads of the same process.
* A holder that is finishing (``MaildropLock.finishing``: a session that has
  ended and is saving its state) makes a new ``acquire`` in this process wait
  for it, up to ``wait`` seconds, instead of failing at once: a client that
  reconnects right after QUIT gets its maildrop, not ``[IN-USE]``.

POSIX record locks have one trap: closing *any* descriptor of the file drops
every lock the process holds on it.  So the process has one instance per
lock file (``MaildropLocks.for_path``, by real path), which opens the file
once and closes it only when it holds no lock at all.  (A hard link to the
lock file under another name would defeat this: don't make one.)
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
import time
from typing import ClassVar, Final, Self

from mailslot.store.base import MaildropBusy, MaildropUnavailable

__all__ = ["LOCKS_NAME", "MaildropLock", "MaildropLocks"]

LOCKS_NAME: Final = "mailslot.locks"
_PERSON: Final = b"mailslot-lock"  # BLAKE2b personalisation: these hashes are ours
_BUSY: Final = frozenset({errno.EACCES, errno.EAGAIN})


def lock_offset(maildir: str) -> int:
    """The byte of the lock file that stands for ``maildir``."""
    key = os.path.normpath(os.path.abspath(maildir)).encode("utf-8", "surrogateescape")
    digest = hashlib.blake2b(key, digest_size=8, person=_PERSON).digest()
    return int.from_bytes(digest, "big") >> 2  # positive in a signed 64-bit off_t


class MaildropLock:
    """One held maildrop lock; ``release`` is idempotent."""

    __slots__ = ("_locks", "_offset")

    def finishing(self) -> None:
        """Announce that ``release`` follows shortly: waiters may wait for it."""
        if self._locks is not None:
            self._locks._finishing(self._offset)

    def __init__(self, locks: MaildropLocks, offset: int) -> None:
        self._locks: MaildropLocks | None = locks
        self._offset = offset

    @property
    def held(self) -> bool:
        return self._locks is not None

    def release(self) -> None:
        locks, self._locks = self._locks, None
        if locks is not None:
            locks._release(self._offset)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.release()


class MaildropLocks:
    """The locks of every maildrop below one mail root (see the module docstring)."""

    _instances: ClassVar[dict[str, MaildropLocks]] = {}
    _instances_mutex: ClassVar[threading.Lock] = threading.Lock()

    __slots__ = ("_changed", "_fd", "_finishing_offsets", "_held", "_mutex", "path")

    def __init__(self, path: str) -> None:
        """Use ``for_path``: two instances on one file would undo each other."""
        self.path = path
        self._fd = -1
        self._held: set[int] = set()
        self._finishing_offsets: set[int] = set()
        self._mutex = threading.Lock()
        self._changed = threading.Condition(self._mutex)

    @classmethod
    def for_path(cls, path: str | os.PathLike[str]) -> MaildropLocks:
        """The process's one instance for the lock file at ``path``."""
        real = os.path.realpath(path)
        with cls._instances_mutex:
            instance = cls._instances.get(real)
            if instance is None:
                instance = cls._instances[real] = cls(real)
            return instance

    def prepare(self) -> None:
        """Create the file now, to fail early: ``OSError`` says why it cannot be."""
        with self._mutex:
            self._open()
            self._close_if_idle()

    def _open(self) -> int:
        if self._fd < 0:
            os.makedirs(os.path.dirname(self.path), 0o700, exist_ok=True)
            flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
            self._fd = os.open(self.path, flags, 0o600)
        return self._fd

    def _close_if_idle(self) -> None:
        # Only with nothing held: closing drops every lock we hold on the file.
        if not self._held and self._fd >= 0:
            fd, self._fd = self._fd, -1
            os.close(fd)

    def acquire(self, maildir: str, *, wait: float = 0.0) -> MaildropLock:
        """Lock ``maildir``: ``MaildropBusy`` if someone holds it, unless it is
        a holder of this process that is finishing and lets go within ``wait``
        seconds."""
        offset = lock_offset(maildir)
        deadline = time.monotonic() + wait
        with self._mutex:
            while offset in self._held:
                left = deadline - time.monotonic()
                if offset not in self._finishing_offsets or left <= 0:
                    raise MaildropBusy(f"maildrop {maildir} is in use")
                self._changed.wait(left)
            try:
                fd = self._open()
            except OSError as exc:
                raise MaildropUnavailable(f"cannot open {self.path}: {exc}") from exc
            # Reserved: no one in this process takes it, and the file stays
            # open, while the system call runs without the mutex (the event
            # loop's releases must not wait for it).
            self._held.add(offset)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset, os.SEEK_SET)
        except OSError as exc:
            self._forget(offset)
            if exc.errno in _BUSY:
                raise MaildropBusy(f"maildrop {maildir} is in use") from None
            raise MaildropUnavailable(f"cannot lock {maildir} in {self.path}: {exc}") from exc
        return MaildropLock(self, offset)

    def _finishing(self, offset: int) -> None:
        with self._mutex:
            if offset in self._held:
                self._finishing_offsets.add(offset)

    def _release(self, offset: int) -> None:
        with self._mutex:
            if self._held == {offset}:
                self._forget_locked(offset)  # closes the file, which unlocks
                return
            fd = self._fd
        # Still in _held meanwhile: no one here can take the byte between the
        # unlock and the forgetting, and the file cannot be closed.
        fcntl.lockf(fd, fcntl.LOCK_UN, 1, offset, os.SEEK_SET)
        self._forget(offset)

    def _forget(self, offset: int) -> None:
        with self._mutex:
            self._forget_locked(offset)

    def _forget_locked(self, offset: int) -> None:
        self._held.discard(offset)
        self._finishing_offsets.discard(offset)
        self._changed.notify_all()
        self._close_if_idle()

    def __len__(self) -> int:
        """How many maildrops this process holds."""
        return len(self._held)
