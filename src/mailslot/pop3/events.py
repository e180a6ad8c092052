"""What a POP3 session asks of the world, and what the world answers.

The session is sans-I/O: when a command needs something it cannot do itself
(check a password, open and lock a maildrop, read a message, delete messages)
``Session.next_event()`` returns one of the ``*Requested`` events below, and the
session waits until the driver passes the matching answer to
``Session.send()``.  Every event and answer is a frozen value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


class MessageEntry(Protocol):
    """One message of the maildrop snapshot, as the session sees it."""

    @property
    def uid(self) -> str: ...

    @property
    def size(self) -> int: ...


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class NeedData:
    """Every buffered command has been handled: feed more bytes."""


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthRequested:
    """Verify ``password`` for ``username`` (USER/PASS)."""

    username: str
    password: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ApopRequested:
    """Verify an APOP digest (RFC 1939 §7) against the greeting timestamp."""

    username: str
    digest: str
    timestamp: str


@dataclass(frozen=True, slots=True, kw_only=True)
class SaslRequested:
    """AUTH (RFC 5034): start ``mechanism``.  ``initial_response`` is the
    decoded initial response, ``b""`` for ``=``, None when absent."""

    mechanism: str
    initial_response: bytes | None


@dataclass(frozen=True, slots=True)
class SaslResponse:
    """The client's decoded answer to the last ``SaslChallenge``."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsRequested:
    """STLS accepted (RFC 2595 §4): start the TLS handshake now; the +OK has
    been queued in ``data_to_send()``."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MaildropRequested:
    """Open and exclusively lock the maildrop of an authenticated ``account``."""

    account: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageRequested:
    """Stream message ``index`` (0-based).  ``top_lines`` is set for TOP."""

    index: int
    top_lines: int | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitRequested:
    """UPDATE state: remove the messages at ``indexes`` (0-based), and mark
    those at ``retrieved`` as retrieved (only when EXPIRE is a number of
    days: the retrieval starts the clock)."""

    indexes: frozenset[int]
    retrieved: frozenset[int] = frozenset()


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseRequested:
    """Send what is left in ``data_to_send()`` and close the connection."""

    reason: str


Event = (
    NeedData
    | AuthRequested
    | ApopRequested
    | SaslRequested
    | SaslResponse
    | TlsRequested
    | MaildropRequested
    | MessageRequested
    | CommitRequested
    | CloseRequested
)


# ---------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthSucceeded:
    account: str


@dataclass(frozen=True, slots=True, kw_only=True)
class AuthFailed:
    """Wrong user, wrong password, or a refused login: all look the same."""

    temporary: bool = False


@dataclass(frozen=True, slots=True)
class SaslChallenge:
    """Send ``data`` to the client as a ``+ <base64>`` continuation."""

    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class TlsStarted:
    """The handshake succeeded; the connection is now encrypted."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MaildropOpened:
    messages: Sequence[MessageEntry]


@dataclass(frozen=True, slots=True, kw_only=True)
class MaildropBusy:
    """Another session holds the lock (``[IN-USE]``)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class LoginDelayed:
    """The account logged in less than LOGIN-DELAY seconds ago."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MaildropFailed:
    permanent: bool = False


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageOpened:
    """The message is readable; ``MessageData`` chunks follow."""


@dataclass(frozen=True, slots=True)
class MessageData:
    data: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageEnd:
    """The last chunk has been sent."""


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageUnavailable:
    """The message was removed from storage by someone else."""


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitDone:
    pass


@dataclass(frozen=True, slots=True, kw_only=True)
class CommitFailed:
    pass


Answer = (
    AuthSucceeded
    | AuthFailed
    | SaslChallenge
    | TlsStarted
    | MaildropOpened
    | MaildropBusy
    | LoginDelayed
    | MaildropFailed
    | MessageOpened
    | MessageData
    | MessageEnd
    | MessageUnavailable
    | CommitDone
    | CommitFailed
)
