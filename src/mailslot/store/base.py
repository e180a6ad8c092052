"""The maildrop interface every storage backend implements.

Theory of operation (RFC 1939 §4, §6):

1. ``MaildropStore.open(user, domain)`` takes an exclusive lock on the
   maildrop (``MaildropBusy`` if another session holds it) and returns a
   ``Maildrop`` whose ``messages`` is a *fixed snapshot*: message *n* of the
   session is ``messages[n - 1]`` for the whole session, whatever is
   delivered or removed meanwhile.
2. ``Maildrop.open_message(index)`` returns a binary file positioned at the
   start of the stored message (raw bytes as stored; line ends are
   normalised on the wire, not here).  ``MessageGone`` if another tool
   removed it.
3. ``Maildrop.commit(indexes, retrieved)`` removes the messages at
   ``indexes`` and marks those at ``retrieved`` as retrieved (for EXPIRE);
   it is called only in the UPDATE state, after QUIT.
4. ``Maildrop.close()`` releases the lock; it is idempotent and is called on
   every session end, with or without commit.

Every method may block on disk: callers run them off the event loop.
No backend knows POP3.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import BinaryIO, NamedTuple, Protocol


class MaildropError(Exception):
    """A storage failure.  ``permanent`` selects ``[SYS/PERM]`` over ``[SYS/TEMP]``."""

    permanent: bool = False


class MaildropBusy(MaildropError):
    """Another session holds the maildrop lock (RFC 2449 ``[IN-USE]``)."""


class MaildropUnavailable(MaildropError):
    """The maildrop cannot be opened (missing permissions, bad location...)."""

    def __init__(self, message: str, *, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class MessageGone(MaildropError):
    """The message was removed from storage by someone else mid-session."""


class DeliveryError(Exception):
    """A message could not be stored.  ``temporary`` means "try again later"
    (disk full, I/O error); otherwise the failure is permanent."""

    def __init__(self, message: str, *, temporary: bool) -> None:
        super().__init__(message)
        self.temporary = temporary


class MessageInfo(NamedTuple):
    """One message of a maildrop snapshot.

    ``size`` is the size in octets *as transmitted*: with CRLF line ends and a
    final CRLF, before dot-stuffing (RFC 1939 §11).  ``uid`` is its unique id:
    1 to 70 characters in 0x21-0x7E, stable across sessions, never reused.

    A named tuple, not a dataclass: a 100,000-message maildrop makes 100,000
    of them per open, and tuples are the cheapest immutable record.
    """

    uid: str
    size: int


class Maildrop(Protocol):
    @property
    def messages(self) -> Sequence[MessageInfo]: ...

    def open_message(self, index: int) -> BinaryIO: ...

    def commit(self, indexes: Collection[int], retrieved: Collection[int] = ()) -> int: ...

    @property
    def unsaved(self) -> bool:
        """State of the snapshot not on disk yet: ``commit`` or ``close``
        will write it, so run them off the event loop."""
        ...

    def close(self) -> None: ...


class MaildropStore(Protocol):
    def open(self, user: str, domain: str) -> Maildrop: ...

    def deliver(self, user: str, domain: str, message: BinaryIO) -> str: ...
