"""The LMTP session: a sans-I/O state machine (RFC 2033, on RFC 5321, with
RFC 1870 SIZE, RFC 1652 8BITMIME, RFC 2034 ENHANCEDSTATUSCODES and RFC 2920
PIPELINING).

Theory of operation
-------------------
The driver owns the socket and the disk; the session owns the protocol::

    session = LmtpSession(options=LmtpSessionOptions(hostname="mx.example"))
    transport.write(session.data_to_send())                 # the 220 greeting
    while True:
        event = session.next_event()
        transport.write(session.data_to_send())
        match event:
            case NeedData():           session.receive_data(await read())  # or receive_eof()
            case RecipientRequested(): session.send(RecipientAccepted(...)
                                                    or RecipientRejected(...))
            case MessageData(chunk):   spool.write(chunk)
            case MessageDiscarded():   drop the spool (too large; replies follow)
            case MessageComplete():    deliver to each recipient, then
                                       session.send(DeliveryResults([...]))  # recipient order
            case CloseRequested():     close the connection

States (``COMMANDS_BY_STATE`` is the one table of what is valid where)::

    GREETED --LHLO--> READY --MAIL--> MAIL --RCPT ok--> RCPT --DATA--> DATA
                        ^                                               |
                        +------ "." : one reply per recipient ----------+

RSET and LHLO go back to READY from any transaction state; QUIT closes.  A
command valid elsewhere but not here is ``503 5.5.1`` (bad sequence), an
unknown one ``500 5.5.1``; HELO and EHLO are unknown (RFC 2033 §4.1: LMTP
has LHLO only).

The one rule that makes LMTP differ from SMTP (RFC 2033 §4.2): after the
final ``.`` the server sends one reply *per accepted recipient*, in RCPT
order, each saying whether the message is now stored for that recipient.
The session asks for that with ``MessageComplete`` and writes exactly the
replies it gets back in ``DeliveryResults``.

Commands are bounded lines (``MAX_COMMAND_LINE``, RFC 5321 §4.5.3.1.4): a
longer one is answered ``500 5.5.2`` once and skipped up to its LF, so its
tail never runs as a command.  The DATA text is not split into lines at all:
``wire.DataReader`` scans chunks for the terminating dot and undoes
dot-stuffing across chunk boundaries, so lines of any length pass, and the
session bounds only the total size (``max_message_size``, advertised as
SIZE).  A message over it is read to its end, then refused for every
recipient with ``552 5.3.4``; the driver is told at once
(``MessageDiscarded``) so it stops spooling.

Replies go out strictly in command order (PIPELINING): while a request is
outstanding the session parses nothing further, so the driver reads no more
input.  Every 2xx/4xx/5xx reply carries an enhanced status code (RFC 3463),
except the greeting and the LHLO reply, which RFC 2034 exempts; 354 is a
3xx and carries none either.  No reply echoes client input.

Client mistakes are 5xx replies; ``max_bad_commands`` of them in a row end
the session with ``421 4.7.0``.  Misuse by the driver raises
``LocalProtocolError``.  This module imports nothing of mailslot but
``wire``.
"""

from __future__ import annotations

import collections
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from mailslot.wire import LINE_TOO_LONG, DataReader, LineReader

__all__ = [
    "COMMANDS_BY_STATE",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_COMMAND_LINE",
    "MAX_PATH",
    "MAX_REPLY_LINE",
    "MIN_RECIPIENTS",
    "CloseRequested",
    "DeliveryResult",
    "DeliveryResults",
    "LmtpSession",
    "LmtpSessionOptions",
    "LmtpStatistics",
    "LocalProtocolError",
    "MessageComplete",
    "MessageData",
    "MessageDiscarded",
    "NeedData",
    "Recipient",
    "RecipientAccepted",
    "RecipientRejected",
    "RecipientRequested",
    "Reply",
    "ReplyCode",
    "State",
    "Verb",
]

MAX_COMMAND_LINE: Final = 512  # RFC 5321 §4.5.3.1.4: octets, CRLF included
MAX_REPLY_LINE: Final = 512  # RFC 5321 §4.5.3.1.5: octets, CRLF included
MAX_PATH: Final = 256  # RFC 5321 §4.5.3.1.3: octets, angle brackets included
MIN_RECIPIENTS: Final = 100  # RFC 5321 §4.5.3.1.8: buffer at least 100
MAX_SIZE_DIGITS: Final = 20  # RFC 1870: size-value is 1*20DIGIT
DEFAULT_MAX_MESSAGE_SIZE: Final = 50 * 1024 * 1024


class LocalProtocolError(Exception):
    """The driver used the session wrongly (a bug in mailslot, not the peer)."""


# ---------------------------------------------------------------- replies


class ReplyCode(enum.IntEnum):
    """The RFC 5321 §4.2.3 reply codes LMTP uses."""

    SERVICE_READY = 220
    CLOSING = 221
    OK = 250
    CANNOT_VRFY = 252
    START_MAIL_INPUT = 354
    SERVICE_NOT_AVAILABLE = 421
    LOCAL_ERROR = 451
    INSUFFICIENT_STORAGE = 452
    SYNTAX_ERROR = 500
    PARAMETER_SYNTAX_ERROR = 501
    BAD_SEQUENCE = 503
    MAILBOX_UNAVAILABLE = 550
    EXCEEDED_STORAGE = 552
    PARAMETER_NOT_IMPLEMENTED = 555


_ENHANCED = re.compile(r"[245]\.[0-9]{1,3}\.[0-9]{1,3}")


def _check_reply(code: int, enhanced: str, text: str) -> None:
    if not 200 <= code <= 599:
        raise LocalProtocolError(f"reply code out of range: {code}")
    if code // 100 == 3:
        if enhanced:
            raise LocalProtocolError("3xx replies carry no enhanced status code (RFC 2034)")
    elif not _ENHANCED.fullmatch(enhanced) or enhanced[0] != str(code)[0]:
        raise LocalProtocolError(f"bad enhanced status code {enhanced!r} for {code}")
    if not (text.isascii() and text.isprintable()):
        raise LocalProtocolError("reply text must be printable ASCII")
    if len(text) + len(enhanced) + 7 > MAX_REPLY_LINE:
        raise LocalProtocolError("reply text too long")


@dataclass(frozen=True, slots=True)
class Reply:
    """One reply line: ``code enhanced text`` (RFC 5321 §4.2, RFC 2034)."""

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        _check_reply(self.code, self.enhanced, self.text)

    def encode(self) -> bytes:
        if self.enhanced:
            return f"{self.code} {self.enhanced} {self.text}\r\n".encode()
        return f"{self.code} {self.text}\r\n".encode()


R = ReplyCode
OK = Reply(R.OK, "2.0.0", "OK")
SENDER_OK = Reply(R.OK, "2.1.0", "Sender OK")
RECIPIENT_OK = Reply(R.OK, "2.1.5", "Recipient OK")
CANNOT_VRFY = Reply(
    R.CANNOT_VRFY, "2.0.0", "Cannot VRFY user, but will accept message and attempt delivery"
)
START_INPUT = Reply(R.START_MAIL_INPUT, "", "Start mail input; end with <CRLF>.<CRLF>")
BYE = Reply(R.CLOSING, "2.0.0", "Bye")
TIMEOUT = Reply(R.SERVICE_NOT_AVAILABLE, "4.4.2", "Idle timeout, closing connection")
TOO_MANY_ERRORS = Reply(R.SERVICE_NOT_AVAILABLE, "4.7.0", "Too many errors, closing connection")
UNKNOWN_COMMAND = Reply(R.SYNTAX_ERROR, "5.5.1", "Command unrecognized")
LHLO_REQUIRED = Reply(R.SYNTAX_ERROR, "5.5.1", "This is LMTP: use LHLO")
LINE_TOO_LONG_REPLY = Reply(R.SYNTAX_ERROR, "5.5.2", "Line too long")
NUL_IN_COMMAND = Reply(R.SYNTAX_ERROR, "5.5.2", "NUL character in command")
NOT_UTF8 = Reply(R.SYNTAX_ERROR, "5.5.2", "Command is not valid UTF-8")
NO_ARGUMENTS = Reply(R.PARAMETER_SYNTAX_ERROR, "5.5.4", "No arguments allowed")
LHLO_SYNTAX = Reply(R.PARAMETER_SYNTAX_ERROR, "5.5.4", "Syntax: LHLO hostname")
MAIL_SYNTAX = Reply(R.PARAMETER_SYNTAX_ERROR, "5.5.4", "Syntax: MAIL FROM:<address>")
RCPT_SYNTAX = Reply(R.PARAMETER_SYNTAX_ERROR, "5.5.4", "Syntax: RCPT TO:<address>")
VRFY_SYNTAX = Reply(R.PARAMETER_SYNTAX_ERROR, "5.5.4", "Syntax: VRFY address")
BAD_SENDER = Reply(R.PARAMETER_SYNTAX_ERROR, "5.1.7", "Bad sender address syntax")
BAD_RECIPIENT = Reply(R.PARAMETER_SYNTAX_ERROR, "5.1.3", "Bad recipient address syntax")
BAD_PARAMETER = Reply(R.PARAMETER_SYNTAX_ERROR, "5.5.4", "Bad MAIL parameter")
UNKNOWN_PARAMETER = Reply(R.PARAMETER_NOT_IMPLEMENTED, "5.5.4", "Unsupported parameter")
NEED_LHLO = Reply(R.BAD_SEQUENCE, "5.5.1", "Send LHLO first")
NEED_MAIL = Reply(R.BAD_SEQUENCE, "5.5.1", "Send MAIL first")
NESTED_MAIL = Reply(R.BAD_SEQUENCE, "5.5.1", "Sender already specified")
NO_RECIPIENTS = Reply(R.BAD_SEQUENCE, "5.5.1", "No valid recipients")
BAD_SEQUENCE = Reply(R.BAD_SEQUENCE, "5.5.1", "Bad sequence of commands")
TOO_MANY_RECIPIENTS = Reply(R.INSUFFICIENT_STORAGE, "4.5.3", "Too many recipients")
MESSAGE_TOO_BIG = Reply(
    R.EXCEEDED_STORAGE, "5.3.4", "Message size exceeds fixed maximum message size"
)


# ---------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class NeedData:
    """Every buffered command has been handled: feed more bytes."""


NEED_DATA = NeedData()


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientRequested:
    """RCPT TO: may mail for ``address`` be accepted?  ``size`` is the
    sender's SIZE declaration (RFC 1870), if any, for a quota check."""

    address: str
    size: int | None = None


@dataclass(frozen=True, slots=True)
class MessageData:
    """Message octets, dot-stuffing undone, line ends as received."""

    chunk: bytes


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageDiscarded:
    """The message grew over the size limit: drop what was spooled.  The
    session reads it to its end and refuses it (``552 5.3.4``) by itself."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Recipient:
    """An accepted recipient: the address as given, the driver's key."""

    address: str
    account_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MessageComplete:
    """The final dot arrived: deliver the spooled message to every recipient
    and answer ``DeliveryResults`` in this order."""

    sender: str
    recipients: tuple[Recipient, ...]
    size: int


@dataclass(frozen=True, slots=True, kw_only=True)
class CloseRequested:
    """Send what is left in ``data_to_send()`` and close the connection."""

    reason: str


Event = (
    NeedData
    | RecipientRequested
    | MessageData
    | MessageDiscarded
    | MessageComplete
    | CloseRequested
)


# ---------------------------------------------------------------- answers


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientAccepted:
    """``account_key`` names the resolved mailbox; it comes back in
    ``MessageComplete.recipients``."""

    account_key: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RecipientRejected:
    """e.g. ``550 5.1.1`` unknown user, ``452 4.2.2`` over quota, ``451
    4.3.0`` lookup failure."""

    code: int
    enhanced: str
    text: str

    def __post_init__(self) -> None:
        _check_reply(self.code, self.enhanced, self.text)
        if self.code < 400:
            raise LocalProtocolError("a rejection needs a 4xx or 5xx code")


class DeliveryResult(NamedTuple):
    """The outcome for one recipient; a plain ``(ok, code, enhanced, text)``
    tuple works too."""

    ok: bool
    code: int
    enhanced: str
    text: str


@dataclass(frozen=True, slots=True)
class DeliveryResults:
    """One result per recipient of ``MessageComplete``, in the same order."""

    results: Sequence[tuple[bool, int, str, str]]


Answer = RecipientAccepted | RecipientRejected | DeliveryResults

UNKNOWN_USER: Final = RecipientRejected(code=550, enhanced="5.1.1", text="User unknown")
OVER_QUOTA: Final = RecipientRejected(code=452, enhanced="4.2.2", text="Mailbox full")
LOOKUP_FAILED: Final = RecipientRejected(
    code=451, enhanced="4.3.0", text="Temporary failure, try again later"
)


# ---------------------------------------------------------------- the table


class State(enum.Enum):
    GREETED = "greeted"  # before LHLO
    READY = "ready"  # LHLO done, no transaction
    MAIL = "mail"  # sender given, no recipient accepted yet
    RCPT = "rcpt"  # at least one recipient accepted
    DATA = "data"  # reading the message text
    CLOSED = "closed"


class Verb(enum.StrEnum):
    LHLO = "LHLO"
    MAIL = "MAIL"
    RCPT = "RCPT"
    DATA = "DATA"
    RSET = "RSET"
    NOOP = "NOOP"
    VRFY = "VRFY"
    QUIT = "QUIT"


_ANYTIME = frozenset({Verb.LHLO, Verb.RSET, Verb.NOOP, Verb.VRFY, Verb.QUIT})

COMMANDS_BY_STATE: Final[dict[State, frozenset[Verb]]] = {
    State.GREETED: _ANYTIME,
    State.READY: _ANYTIME | {Verb.MAIL},
    State.MAIL: _ANYTIME | {Verb.RCPT},
    State.RCPT: _ANYTIME | {Verb.RCPT, Verb.DATA},
    State.DATA: frozenset(),
    State.CLOSED: frozenset(),
}

# Why a command is out of sequence; anything else is BAD_SEQUENCE.
_SEQUENCE_REPLIES: Final[dict[tuple[State, Verb], Reply]] = {
    **{(State.GREETED, verb): NEED_LHLO for verb in (Verb.MAIL, Verb.RCPT, Verb.DATA)},
    **{(State.READY, verb): NEED_MAIL for verb in (Verb.RCPT, Verb.DATA)},
    (State.MAIL, Verb.MAIL): NESTED_MAIL,
    (State.RCPT, Verb.MAIL): NESTED_MAIL,
    (State.MAIL, Verb.DATA): NO_RECIPIENTS,
}

_WRONG_PROTOCOL: Final = frozenset({"HELO", "EHLO"})


@dataclass(frozen=True, slots=True, kw_only=True)
class LmtpSessionOptions:
    """Per-listener protocol limits, built by the server from the config."""

    hostname: str = "localhost"  # first word of the greeting and LHLO reply
    greeting: str = "LMTP mailslot ready"
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE  # octets, advertised as SIZE
    max_recipients: int = MIN_RECIPIENTS
    max_bad_commands: int = 20

    def __post_init__(self) -> None:
        if not self.hostname or not all("!" <= c <= "~" for c in self.hostname):
            raise ValueError("hostname must be printable ASCII without spaces")
        if not (self.greeting.isascii() and self.greeting.isprintable()):
            raise ValueError("greeting must be printable ASCII")
        if len(self.hostname) + len(self.greeting) + 6 > MAX_REPLY_LINE:
            raise ValueError("greeting too long")
        if self.max_message_size < 1:
            raise ValueError("max_message_size must be positive")
        if self.max_recipients < 1:
            raise ValueError("max_recipients must be positive")
        if self.max_bad_commands < 1:
            raise ValueError("max_bad_commands must be positive")


@dataclass(frozen=True, slots=True, kw_only=True)
class LmtpStatistics:
    state: State
    commands: int
    bad_commands: int
    messages: int  # transactions with at least one 250 after DATA
    deliveries: int  # 250 replies after DATA
    octets: int  # message octets received, dot-stuffing undone


class _Wait(enum.Enum):
    RECIPIENT = "recipient"
    RESULTS = "results"


# <path>: quoted strings may hold spaces and ">"; no controls anywhere.
_PATH = re.compile(r'<((?:"(?:[^"\\\x00-\x1f\x7f]|\\[\x20-\x7e])*"|[^<>"\s\x00-\x1f\x7f])*)>')
_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?")
_HOSTNAME = re.compile(r"[\x21-\x7e]+")


def _parse_path(text: str) -> tuple[str, str] | None:
    """``<address> params`` → (address, params), source route dropped
    (RFC 5321 §4.1.2, §C).  None for bad syntax."""
    match = _PATH.match(text)
    if match is None:
        return None
    rest = text[match.end() :]
    if rest and not rest.startswith(" "):
        return None
    if len(match.group(0).encode()) > MAX_PATH:
        return None
    address = match.group(1)
    if address.startswith("@"):
        # A source route, "@relay,@relay:user@domain": MUST be ignored.
        _route, colon, address = address.partition(":")
        if not colon or not address:
            return None
    return address, rest.strip(" ")


def _parse_params(text: str) -> dict[str, str | None] | None:
    """ESMTP parameters (RFC 5321 §4.1.2); keys upper-cased.  None if bad."""
    params: dict[str, str | None] = {}
    for word in text.split():
        match = _PARAM.fullmatch(word)
        if match is None:
            return None
        key = match.group(1).upper()
        if key in params:
            return None
        params[key] = match.group(2)
    return params


class LmtpSession:
    """One LMTP conversation, from greeting to close."""

    __slots__ = (
        "_bad_commands",
        "_close_reason",
        "_commands",
        "_data",
        "_declared_size",
        "_deliveries",
        "_delivering",
        "_discarding",
        "_eof",
        "_events",
        "_handlers",
        "_inbox",
        "_lhlo_done",
        "_message_octets",
        "_messages",
        "_octets",
        "_options",
        "_out",
        "_reader",
        "_recipients",
        "_requested",
        "_sender",
        "_state",
        "_waiting",
    )

    def __init__(self, *, options: LmtpSessionOptions) -> None:
        self._options = options
        self._state = State.GREETED
        self._reader = LineReader(MAX_COMMAND_LINE)
        self._data: DataReader | None = None
        self._inbox: list[bytes] = []  # input during DATA, not yet scanned
        self._out: list[bytes] = []
        self._events: collections.deque[Event] = collections.deque()
        self._waiting: _Wait | None = None
        self._eof = False
        self._close_reason = ""
        self._lhlo_done = False
        self._sender = ""
        self._declared_size: int | None = None
        self._recipients: list[Recipient] = []
        self._requested = ""  # the address of the outstanding RCPT
        self._delivering: tuple[Recipient, ...] = ()
        self._discarding = False
        self._message_octets = 0
        self._commands = 0
        self._bad_commands = 0
        self._messages = 0
        self._deliveries = 0
        self._octets = 0
        self._handlers: dict[Verb, Callable[[str], Event | None]] = {
            Verb.LHLO: self._cmd_lhlo,
            Verb.MAIL: self._cmd_mail,
            Verb.RCPT: self._cmd_rcpt,
            Verb.DATA: self._cmd_data,
            Verb.RSET: self._cmd_rset,
            Verb.NOOP: self._cmd_noop,
            Verb.VRFY: self._cmd_vrfy,
            Verb.QUIT: self._cmd_quit,
        }
        self._out.append(f"220 {options.hostname} {options.greeting}\r\n".encode())

    # ------------------------------------------------------------ public API

    @property
    def state(self) -> State:
        return self._state

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            raise LocalProtocolError("data after EOF")
        if self._state is State.DATA:
            self._inbox.append(data)
        else:
            self._reader.feed(data)

    def receive_eof(self) -> None:
        self._eof = True

    def timed_out(self) -> None:
        """The idle timer fired (RFC 5321 §4.5.3.2.7): 421, then close."""
        if self._state is not State.CLOSED:
            self._reply(TIMEOUT)
            self._close("timeout")

    def next_event(self) -> Event:
        if self._waiting is not None:
            raise LocalProtocolError(f"waiting for an answer ({self._waiting.value})")
        while True:
            if self._events:
                return self._expect(self._events.popleft())
            if self._state is State.CLOSED:
                return CloseRequested(reason=self._close_reason)
            event = self._data_step() if self._state is State.DATA else self._command_step()
            if event is not None:
                return self._expect(event)

    def send(self, answer: Answer) -> None:
        match answer:
            case RecipientAccepted(account_key=key) if self._waiting is _Wait.RECIPIENT:
                self._waiting = None
                self._recipients.append(Recipient(address=self._requested, account_key=key))
                self._state = State.RCPT
                self._reply(RECIPIENT_OK)
            case RecipientRejected(code=code, enhanced=enhanced, text=text) if (
                self._waiting is _Wait.RECIPIENT
            ):
                self._waiting = None
                self._reply(Reply(code, enhanced, text))
            case DeliveryResults(results=results) if self._waiting is _Wait.RESULTS:
                self._delivered(results)
            case _:
                raise LocalProtocolError(f"unexpected {type(answer).__name__}")

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def statistics(self) -> LmtpStatistics:
        return LmtpStatistics(
            state=self._state,
            commands=self._commands,
            bad_commands=self._bad_commands,
            messages=self._messages,
            deliveries=self._deliveries,
            octets=self._octets,
        )

    # ------------------------------------------------------------ plumbing

    def _expect(self, event: Event) -> Event:
        if isinstance(event, RecipientRequested):
            self._waiting = _Wait.RECIPIENT
        elif isinstance(event, MessageComplete):
            self._waiting = _Wait.RESULTS
        return event

    def _reply(self, reply: Reply) -> None:
        self._out.append(reply.encode())

    def _bad(self, reply: Reply) -> None:
        """A malformed, unknown or misplaced command."""
        self._bad_commands += 1
        if self._bad_commands >= self._options.max_bad_commands:
            self._reply(TOO_MANY_ERRORS)
            self._close("bad-commands")
        else:
            self._reply(reply)

    def _good(self, reply: Reply) -> None:
        self._bad_commands = 0
        self._reply(reply)

    def _close(self, reason: str) -> None:
        if self._state is not State.CLOSED:
            self._state = State.CLOSED
            self._close_reason = reason
            self._inbox.clear()

    def _reset_transaction(self) -> None:
        self._sender = ""
        self._declared_size = None
        self._recipients = []
        self._data = None
        self._discarding = False
        self._message_octets = 0
        self._state = State.READY if self._lhlo_done else State.GREETED

    # ------------------------------------------------------------ commands

    def _command_step(self) -> Event | None:
        line = self._reader.next_line()
        if line is None:
            if self._eof:
                self._close("eof")
                return None
            return NEED_DATA
        self._commands += 1
        if line is LINE_TOO_LONG:
            self._bad(LINE_TOO_LONG_REPLY)
            return None
        assert isinstance(line, bytes)
        return self._handle_line(line)

    def _handle_line(self, line: bytes) -> Event | None:
        if b"\x00" in line:
            self._bad(NUL_IN_COMMAND)
            return None
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            self._bad(NOT_UTF8)
            return None
        head, _, arg = text.partition(" ")
        name = head.upper()
        try:
            verb = Verb(name)
        except ValueError:
            self._bad(LHLO_REQUIRED if name in _WRONG_PROTOCOL else UNKNOWN_COMMAND)
            return None
        state = self._state
        if verb not in COMMANDS_BY_STATE[state]:
            self._bad(_SEQUENCE_REPLIES.get((state, verb), BAD_SEQUENCE))
            return None
        return self._handlers[verb](arg.strip(" "))

    def _cmd_lhlo(self, arg: str) -> Event | None:
        if not _HOSTNAME.fullmatch(arg):
            self._bad(LHLO_SYNTAX)
            return None
        # RFC 5321 §4.1.4: like EHLO, LHLO resets any transaction.
        self._lhlo_done = True
        self._reset_transaction()
        self._bad_commands = 0
        options = self._options
        lines = [
            options.hostname,
            "PIPELINING",
            "ENHANCEDSTATUSCODES",
            "8BITMIME",
            f"SIZE {options.max_message_size}",
        ]
        # RFC 2034: no enhanced status code in the LHLO reply (as for EHLO).
        body = "".join(f"250-{line}\r\n" for line in lines[:-1])
        self._out.append(f"{body}250 {lines[-1]}\r\n".encode())
        return None

    def _cmd_mail(self, arg: str) -> Event | None:
        if arg[:5].upper() != "FROM:":
            self._bad(MAIL_SYNTAX)
            return None
        parsed = _parse_path(arg[5:].lstrip(" "))
        if parsed is None:
            self._bad(BAD_SENDER)
            return None
        sender, param_text = parsed
        params = _parse_params(param_text)
        if params is None:
            self._bad(BAD_PARAMETER)
            return None
        size: int | None = None
        for key, value in params.items():
            if key == "SIZE":
                if value is None or not value.isdigit() or len(value) > MAX_SIZE_DIGITS:
                    self._bad(BAD_PARAMETER)
                    return None
                size = int(value)
            elif key == "BODY":
                if value is None or value.upper() not in ("7BIT", "8BITMIME"):
                    self._bad(BAD_PARAMETER)
                    return None
            else:
                self._bad(UNKNOWN_PARAMETER)
                return None
        if size is not None and size > self._options.max_message_size:
            # RFC 1870: a declared size over the limit is refused at once.
            self._good(MESSAGE_TOO_BIG)
            return None
        self._sender = sender
        self._declared_size = size
        self._state = State.MAIL
        self._good(SENDER_OK)
        return None

    def _cmd_rcpt(self, arg: str) -> Event | None:
        if arg[:3].upper() != "TO:":
            self._bad(RCPT_SYNTAX)
            return None
        parsed = _parse_path(arg[3:].lstrip(" "))
        if parsed is None or not parsed[0]:
            self._bad(BAD_RECIPIENT)
            return None
        address, param_text = parsed
        params = _parse_params(param_text)
        if params is None:
            self._bad(BAD_PARAMETER)
            return None
        if params:
            self._bad(UNKNOWN_PARAMETER)  # no DSN: RCPT takes no parameters
            return None
        self._bad_commands = 0
        if len(self._recipients) >= self._options.max_recipients:
            # RFC 5321 §4.5.3.1.10: 452 and the client sends the rest later.
            self._reply(TOO_MANY_RECIPIENTS)
            return None
        self._requested = address
        return RecipientRequested(address=address, size=self._declared_size)

    def _cmd_data(self, arg: str) -> Event | None:
        if arg:
            self._bad(NO_ARGUMENTS)
            return None
        self._good(START_INPUT)
        self._state = State.DATA
        self._data = DataReader()
        self._message_octets = 0
        self._discarding = False
        # Octets after "DATA\r\n" are message text, not commands.
        leftover = self._reader.clear()
        if leftover:
            self._inbox.append(leftover)
        return None

    def _cmd_rset(self, arg: str) -> Event | None:
        if arg:
            self._bad(NO_ARGUMENTS)
            return None
        self._reset_transaction()
        self._good(OK)
        return None

    def _cmd_noop(self, arg: str) -> Event | None:
        # RFC 5321 §4.1.1.9: a parameter string is allowed and ignored.
        self._good(OK)
        return None

    def _cmd_vrfy(self, arg: str) -> Event | None:
        if not arg:
            self._bad(VRFY_SYNTAX)
            return None
        # RFC 5321 §3.5.3: 252 tells nothing about which users exist.
        self._good(CANNOT_VRFY)
        return None

    def _cmd_quit(self, arg: str) -> Event | None:
        if arg:
            self._bad(NO_ARGUMENTS)
            return None
        self._reply(BYE)
        self._close("quit")
        return None

    # ------------------------------------------------------------ DATA

    def _data_step(self) -> Event | None:
        if not self._inbox:
            if self._eof:
                self._close("eof-in-data")  # nothing is delivered
                return None
            return NEED_DATA
        reader = self._data
        assert reader is not None
        body, done = reader.feed(self._inbox.pop(0))
        if body:
            self._message_octets += len(body)
            self._octets += len(body)
            if not self._discarding:
                if self._message_octets > self._options.max_message_size:
                    self._discarding = True
                    self._events.append(MessageDiscarded())
                else:
                    self._events.append(MessageData(body))
        if done:
            remainder = b"".join([reader.remainder, *self._inbox])
            self._inbox.clear()
            self._end_of_data()
            self._reader.feed(remainder)
        return None

    def _end_of_data(self) -> None:
        recipients = tuple(self._recipients)
        if self._discarding:
            for _ in recipients:
                self._reply(MESSAGE_TOO_BIG)
        else:
            self._delivering = recipients
            self._events.append(
                MessageComplete(
                    sender=self._sender, recipients=recipients, size=self._message_octets
                )
            )
        self._reset_transaction()

    def _delivered(self, results: Sequence[tuple[bool, int, str, str]]) -> None:
        if len(results) != len(self._delivering):
            raise LocalProtocolError(
                f"{len(results)} delivery results for {len(self._delivering)} recipients"
            )
        replies = []
        for ok, code, enhanced, text in results:
            if ok != (200 <= code < 300):
                raise LocalProtocolError(f"delivery result ok={ok} with code {code}")
            replies.append(Reply(code, enhanced, text))
        self._waiting = None
        self._delivering = ()
        delivered = sum(1 for result in results if result[0])
        self._deliveries += delivered
        self._messages += 1 if delivered else 0
        self._bad_commands = 0
        for reply in replies:
            self._reply(reply)
