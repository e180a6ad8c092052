"""The POP3 session: a sans-I/O state machine (RFC 1939, RFC 2449, RFC 3206,
RFC 6856).

Theory of operation
-------------------
The driver owns the socket; the session owns the protocol::

    session = Session(options=..., greeting_timestamp="<1896.697170952@host>")
    transport.write(session.data_to_send())          # the greeting
    while True:
        event = session.next_event()
        transport.write(session.data_to_send())
        match event:
            case NeedData():        session.receive_data(await read())  # or receive_eof()
            case AuthRequested():   session.send(AuthSucceeded(...) or AuthFailed())
            case MaildropRequested(): session.send(MaildropOpened(...) or MaildropBusy() ...)
            case MessageRequested(): session.send(MessageOpened())
                                     session.send(MessageData(chunk))  # repeatedly
                                     session.send(MessageEnd())
            case CommitRequested(): session.send(CommitDone() or CommitFailed())
            case CloseRequested():  close the connection

Commands are answered strictly in order (PIPELINING, RFC 2449 §6.6): while a
request is outstanding the session parses nothing further, so the driver reads
no more input, and a client that pipelines thousands of RETRs is slowed down by
TCP flow control rather than buffered.

Client mistakes get ``-ERR`` and the session goes on; a run of
``max_bad_commands`` of them ends it (as Dovecot does).  Misuse by the driver
raises ``LocalProtocolError``.  No reply ever echoes client input other than a
validated message number, so every first response line stays under 512
octets (RFC 2449 §4).
"""

from __future__ import annotations

import binascii
import enum
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from mailslot.pop3.events import (
    NEED_DATA,
    Answer,
    ApopRequested,
    AuthFailed,
    AuthRequested,
    AuthSucceeded,
    CloseRequested,
    CommitDone,
    CommitFailed,
    CommitRequested,
    Event,
    LoginDelayed,
    MaildropBusy,
    MaildropFailed,
    MaildropOpened,
    MaildropRequested,
    MessageData,
    MessageEnd,
    MessageEntry,
    MessageOpened,
    MessageRequested,
    MessageUnavailable,
    SaslChallenge,
    SaslRequested,
    SaslResponse,
    TlsRequested,
    TlsStarted,
)
from mailslot.pop3.states import COMMANDS_BY_STATE, State, Verb, allowed_text
from mailslot.wire import LINE_TOO_LONG, DotStuffer, LineReader

MAX_COMMAND_LINE = 255  # RFC 2449 §4: octets, CRLF included
MAX_RESPONSE_LINE = 512  # RFC 2449 §4: first line of a response, CRLF included
MAX_MESSAGE_NUMBER_DIGITS = 10  # any longer number is out of range anyway
MAX_SASL_LINE = 8192 + 2  # a SASL response line; Dovecot's LOGIN_MAX_AUTH_BUF_SIZE
PLAINTEXT_MECHANISMS = frozenset({"PLAIN", "LOGIN", "OAUTHBEARER", "XOAUTH2"})

LANGUAGES = {"en": "English"}
_NOTHING: tuple[bytes, ...] = ()  # RFC 6856 §3: tag → description
_APOP_DIGEST = re.compile(r"[0-9a-fA-F]{32}")


class LocalProtocolError(Exception):
    """The driver used the session wrongly (a bug in mailslot, not the client)."""


class RespCode(enum.StrEnum):
    """Extended response codes (RFC 2449 §8, RFC 3206)."""

    IN_USE = "IN-USE"
    LOGIN_DELAY = "LOGIN-DELAY"
    SYS_TEMP = "SYS/TEMP"
    SYS_PERM = "SYS/PERM"
    AUTH = "AUTH"


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionOptions:
    """Per-listener protocol settings, built by the server from the config."""

    expire: str = "NEVER"  # RFC 2449 §6.7: "NEVER" or a number of days
    login_delay: int = 0  # RFC 2449 §6.5: seconds; 0 = not advertised
    implementation: str = "mailslot"  # RFC 2449 §6.9; "" = not advertised
    max_bad_commands: int = 20
    max_auth_failures: int = 3
    tls: bool = False  # the connection is encrypted from the start (POP3S)
    stls: bool = False  # STLS offered (RFC 2595 §4)
    # RFC 2595 §2.3: USER/PASS and plaintext SASL mechanisms can be refused
    # until TLS is active.
    plaintext_without_tls: bool = True
    apop: bool = False  # APOP offered (needs a recoverable secret)
    sasl_mechanisms: tuple[str, ...] = ()
    max_sasl_line: int = MAX_SASL_LINE


@dataclass(frozen=True, slots=True, kw_only=True)
class SessionStatistics:
    state: State
    account: str | None
    commands: int
    bad_commands: int
    messages: int
    octets: int
    retrieved: int
    retrieved_octets: int
    top: int
    deleted: int
    deleted_octets: int


class _Wait(enum.Enum):
    AUTH = "auth"
    SASL = "sasl"
    TLS = "tls"
    MAILDROP = "maildrop"
    MESSAGE_OPEN = "message-open"
    MESSAGE_DATA = "message-data"
    COMMIT = "commit"


_EXPECTED: dict[_Wait, tuple[type, ...]] = {
    _Wait.AUTH: (AuthSucceeded, AuthFailed),
    _Wait.SASL: (SaslChallenge, AuthSucceeded, AuthFailed),
    _Wait.TLS: (TlsStarted,),
    _Wait.MAILDROP: (MaildropOpened, MaildropBusy, LoginDelayed, MaildropFailed),
    _Wait.MESSAGE_OPEN: (MessageOpened, MessageUnavailable),
    _Wait.MESSAGE_DATA: (MessageData, MessageEnd),
    _Wait.COMMIT: (CommitDone, CommitFailed),
}


class Session:
    """One POP3 conversation, from greeting to close."""

    __slots__ = (
        "_account",
        "_auth_failures",
        "_bad_commands",
        "_close_reason",
        "_commands",
        "_deleted",
        "_eof",
        "_live_octets",
        "_messages",
        "_options",
        "_out",
        "_queued",
        "_reader",
        "_retr_index",
        "_retrieved",
        "_sasl_pending",
        "_state",
        "_stats",
        "_stuffer",
        "_timestamp",
        "_tls",
        "_user",
        "_utf8",
        "_waiting",
    )

    def __init__(
        self,
        *,
        options: SessionOptions,
        greeting_timestamp: str,
        greeting: str = "mailslot ready.",
    ) -> None:
        self._options = options
        self._timestamp = greeting_timestamp
        self._state = State.AUTHORIZATION
        self._reader = LineReader(MAX_COMMAND_LINE)
        self._out: list[bytes] = []
        self._waiting: _Wait | None = None
        self._queued: Event | None = None
        self._eof = False
        self._close_reason = ""
        self._user: str | None = None
        self._account: str | None = None
        self._utf8 = False
        self._tls = options.tls
        self._sasl_pending = False
        self._messages: Sequence[MessageEntry] = ()
        self._deleted: set[int] = set()
        self._retrieved: set[int] = set()  # RETRs sent whole, for EXPIRE
        self._live_octets = 0
        self._stuffer: DotStuffer | None = None
        self._retr_index: int | None = None
        self._commands = 0
        self._bad_commands = 0
        self._auth_failures = 0
        # retrieved, retrieved octets, top, deleted, deleted octets
        self._stats = [0, 0, 0, 0, 0]
        # RFC 1939 §7: the timestamp is the APOP challenge.  Clients such as
        # curl use APOP whenever the greeting carries one, so it is shown only
        # when APOP is offered.
        show = options.apop and greeting_timestamp
        text = f"{greeting} {greeting_timestamp}" if show else greeting
        self._ok(text)

    # ------------------------------------------------------------ public API

    @property
    def state(self) -> State:
        return self._state

    @property
    def tls(self) -> bool:
        return self._tls

    @property
    def message_complete(self) -> bool:
        """During TOP: the requested lines have been sent; stop reading."""
        return self._stuffer is not None and self._stuffer.done

    def receive_data(self, data: bytes) -> None:
        if self._eof:
            raise LocalProtocolError("data after EOF")
        self._reader.feed(data)

    def receive_eof(self) -> None:
        self._eof = True

    def timed_out(self) -> None:
        """The autologout timer fired (RFC 1939 §3): close without UPDATE and
        without a response."""
        self._close("timeout")

    def next_event(self) -> Event:
        if self._waiting is not None:
            raise LocalProtocolError(f"waiting for an answer ({self._waiting.value})")
        if self._queued is not None:
            queued, self._queued = self._queued, None
            return self._expect(queued)
        while self._state is not State.CLOSED:
            line = self._reader.next_line()
            if line is None:
                if self._eof:
                    self._close("eof")
                    break
                return NEED_DATA
            if self._sasl_pending:
                event = self._sasl_line(line)
            elif line is LINE_TOO_LONG:
                self._bad("Line too long")
                continue
            else:
                assert isinstance(line, bytes)
                event = self._handle_line(line)
            if event is not None:
                return self._expect(event)
        return CloseRequested(reason=self._close_reason)

    def send(self, answer: Answer) -> None:
        waiting = self._waiting
        if waiting is None or not isinstance(answer, _EXPECTED[waiting]):
            raise LocalProtocolError(f"unexpected {type(answer).__name__}")
        self._waiting = None
        match answer:
            case AuthSucceeded(account=account):
                self._account = account
                self._queued = MaildropRequested(account=account)
            case AuthFailed(temporary=temporary):
                self._auth_failed(temporary=temporary)
            case SaslChallenge(data=data):
                self._out.append(b"+ " + binascii.b2a_base64(data, newline=False) + b"\r\n")
                self._sasl_pending = True
                self._reader.limit = self._options.max_sasl_line
            case TlsStarted():
                # RFC 2595 §4 / CVE-2011-0411: whatever the client pipelined
                # after STLS arrived in plaintext; it is discarded, never run.
                self._reader.clear()
                self._tls = True
                self._user = None
            case MaildropOpened(messages=messages):
                self._open(messages)
            case MaildropBusy():
                self._login_refused(RespCode.IN_USE, "Maildrop is locked by another session")
            case LoginDelayed():
                self._login_refused(RespCode.LOGIN_DELAY, "Logged in too recently, try later")
            case MaildropFailed(permanent=permanent):
                code = RespCode.SYS_PERM if permanent else RespCode.SYS_TEMP
                self._login_refused(code, "Maildrop unavailable")
            case MessageOpened():
                self._message_opened()
            case MessageData(data=data):
                assert self._stuffer is not None
                self._out.append(self._stuffer.encode(data))
                self._waiting = _Wait.MESSAGE_DATA
            case MessageEnd():
                self._message_end()
            case MessageUnavailable():
                self._stuffer = None
                self._retr_index = None
                self._err("Message no longer exists", RespCode.SYS_PERM)
            case CommitDone():
                left = len(self._messages) - len(self._deleted)
                note = f"{left} messages left" if left else "maildrop empty"
                self._ok(f"mailslot signing off ({note})")
                self._close("quit")
            case CommitFailed():
                self._stats[3] = self._stats[4] = 0
                self._err("Some deleted messages were not removed", RespCode.SYS_TEMP)
                self._close("quit")

    def data_to_send(self) -> bytes:
        if not self._out:
            return b""
        data = b"".join(self._out)
        self._out.clear()
        return data

    def data_to_send_parts(self) -> Sequence[bytes]:
        """Like ``data_to_send`` but unjoined, for a vectored write: a message
        chunk is not copied again just to glue its status line to it."""
        if not self._out:
            return _NOTHING  # the common case after a request: no new list
        parts, self._out = self._out, []
        return parts

    def statistics(self) -> SessionStatistics:
        retrieved, retrieved_octets, top, deleted, deleted_octets = self._stats
        return SessionStatistics(
            state=self._state,
            account=self._account,
            commands=self._commands,
            bad_commands=self._bad_commands,
            messages=len(self._messages),
            octets=sum(m.size for m in self._messages),
            retrieved=retrieved,
            retrieved_octets=retrieved_octets,
            top=top,
            deleted=deleted,
            deleted_octets=deleted_octets,
        )

    # ------------------------------------------------------------ plumbing

    def _expect(self, event: Event) -> Event:
        match event:
            case AuthRequested() | ApopRequested():
                self._waiting = _Wait.AUTH
            case SaslRequested() | SaslResponse():
                self._waiting = _Wait.SASL
            case TlsRequested():
                self._waiting = _Wait.TLS
            case MaildropRequested():
                self._waiting = _Wait.MAILDROP
            case MessageRequested():
                self._waiting = _Wait.MESSAGE_OPEN
            case CommitRequested():
                self._waiting = _Wait.COMMIT
            case _:
                pass
        return event

    def _ok(self, text: str = "") -> None:
        self._out.append(b"+OK " + text.encode() + b"\r\n" if text else b"+OK\r\n")

    def _err(self, text: str, code: RespCode | None = None) -> None:
        line = f"-ERR [{code}] {text}\r\n" if code else f"-ERR {text}\r\n"
        self._out.append(line.encode())

    def _multi(self, first: str, lines: Sequence[str]) -> None:
        body = "".join(f"{line}\r\n" for line in lines)
        self._out.append(f"+OK {first}\r\n{body}.\r\n".encode())

    def _bad(self, text: str) -> None:
        """A malformed, unknown or misplaced command."""
        self._bad_commands += 1
        if self._bad_commands >= self._options.max_bad_commands:
            self._err("Too many bad commands, closing connection")
            self._close("bad-commands")
        else:
            self._err(text)

    def _close(self, reason: str) -> None:
        if self._state is not State.CLOSED:
            self._state = State.CLOSED
            self._close_reason = reason

    def _plaintext_ok(self) -> bool:
        return self._tls or self._options.plaintext_without_tls

    def _mechanisms(self) -> list[str]:
        """SASL mechanisms offered now: no plaintext ones before TLS unless
        the operator allows them (as Dovecot does)."""
        mechanisms = self._options.sasl_mechanisms
        if self._plaintext_ok():
            return list(mechanisms)
        return [m for m in mechanisms if m not in PLAINTEXT_MECHANISMS]

    def _stls_offered(self) -> bool:
        return self._options.stls and not self._tls

    def _hidden_verbs(self) -> frozenset[Verb]:
        hidden = set()
        if not self._plaintext_ok():
            hidden |= {Verb.USER, Verb.PASS}
        if not self._options.apop:
            hidden.add(Verb.APOP)
        if not self._stls_offered():
            hidden.add(Verb.STLS)
        return frozenset(hidden)

    def _handle_line(self, line: bytes) -> Event | None:
        self._commands += 1
        if b"\x00" in line:
            self._bad("NUL byte in command")
            return None
        head, _, rest = line.partition(b" ")
        try:
            verb = Verb(head.decode("ascii").upper())
        except (UnicodeDecodeError, ValueError):
            verb = None
        state = self._state
        if verb is None or (verb is Verb.STLS and not self._options.stls):
            allowed = allowed_text(state, hidden=self._hidden_verbs())
            self._bad(f"Unknown command. Allowed in {state.value} state: {allowed}")
            return None
        if verb not in COMMANDS_BY_STATE[state]:
            allowed = allowed_text(state, hidden=self._hidden_verbs())
            self._bad(f"Command not valid in {state.value} state. Allowed: {allowed}")
            return None
        args = rest.decode("utf-8", "replace").split()
        result = _HANDLERS[verb](self, rest, args)
        return result

    def _arity(self, args: list[str], low: int, high: int) -> bool:
        """Check the argument count; answer -ERR and return False if wrong."""
        if len(args) < low:
            self._bad("Missing argument")
            return False
        if len(args) > high:
            self._bad("Too many arguments")
            return False
        self._bad_commands = 0
        return True

    def _message_index(self, arg: str) -> int | None:
        """A live message's 0-based index, or None after answering -ERR."""
        if not (arg.isascii() and arg.isdigit()):
            self._bad("Invalid message number")
            return None
        number = int(arg) if len(arg) <= MAX_MESSAGE_NUMBER_DIGITS else 0
        if not 1 <= number <= len(self._messages):
            self._err("No such message")
            return None
        if number - 1 in self._deleted:
            self._err(f"Message {number} already deleted")
            return None
        return number - 1

    # ------------------------------------------------------------ AUTHORIZATION

    def _cmd_user(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._plaintext_ok():
            self._err(
                "Plaintext authentication disallowed on non-secure connections; use STLS",
                RespCode.AUTH,
            )
            return None
        if not self._arity(args, 1, 1):
            return None
        # RFC 1939 §13: never reveal whether the mailbox exists.
        self._user = args[0]
        self._ok()
        return None

    def _cmd_pass(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._plaintext_ok():
            self._err(
                "Plaintext authentication disallowed on non-secure connections; use STLS",
                RespCode.AUTH,
            )
            return None
        if self._user is None:
            self._bad("Send USER first")
            return None
        if not rest:
            self._bad("Missing password")
            return None
        self._bad_commands = 0
        # RFC 1939 §7: the password is the rest of the line, spaces included.
        username, self._user = self._user, None
        return AuthRequested(username=username, password=rest.decode("utf-8", "replace"))

    def _cmd_apop(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._arity(args, 2, 2):
            return None
        if not self._options.apop or not self._timestamp:
            self._err("APOP is not available", RespCode.AUTH)
            return None
        if not _APOP_DIGEST.fullmatch(args[1]):
            self._bad("Invalid APOP digest")
            return None
        return ApopRequested(username=args[0], digest=args[1].lower(), timestamp=self._timestamp)

    def _cmd_auth(self, rest: bytes, args: list[str]) -> Event | None:
        if not args:
            # Old-style SASL discovery (RFC 1734 era; Outlook probes this way).
            self._bad_commands = 0
            self._multi("Supported SASL mechanisms follow", self._mechanisms())
            return None
        if not self._arity(args, 1, 2):
            return None
        mechanism = args[0].upper()
        if mechanism not in self._mechanisms():
            if mechanism in self._options.sasl_mechanisms:
                self._err(
                    "Plaintext authentication disallowed on non-secure connections; use STLS",
                    RespCode.AUTH,
                )
            else:
                # No [AUTH]: that code is for credentials (RFC 3206), and
                # clients probing for mechanisms must not think theirs were bad.
                self._err("Unsupported SASL mechanism")
            return None
        initial: bytes | None = None
        if len(args) == 2:
            # RFC 5034 §4: "=" is an empty initial response.
            initial = b"" if args[1] == "=" else _decode_base64(args[1])
            if initial is None:
                self._err("Invalid base64 in initial response", RespCode.AUTH)
                return None
        return SaslRequested(mechanism=mechanism, initial_response=initial)

    def _sasl_line(self, line: bytes | object) -> Event | None:
        self._sasl_pending = False
        self._reader.limit = MAX_COMMAND_LINE
        if not isinstance(line, bytes):
            self._sasl_failed("SASL response too long")
            return None
        if line == b"*":
            self._sasl_failed("Authentication cancelled")
            return None
        data = _decode_base64(line.decode("ascii", "replace")) if line else b""
        if data is None:
            self._sasl_failed("Invalid base64 in SASL response")
            return None
        return SaslResponse(data)

    def _sasl_failed(self, text: str) -> None:
        # RFC 5034 §4: a cancelled or malformed exchange fails the AUTH command.
        self._auth_failures += 1
        if self._auth_failures >= self._options.max_auth_failures:
            self._err(f"{text}; too many failures, closing", RespCode.AUTH)
            self._close("auth-failures")
        else:
            self._err(text, RespCode.AUTH)

    def _cmd_stls(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._arity(args, 0, 0):
            return None
        if self._tls:
            self._bad("TLS is already active")
            return None
        self._ok("Begin TLS negotiation")
        return TlsRequested()

    def _cmd_utf8(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._arity(args, 0, 0):
            return None
        self._utf8 = True
        self._ok("UTF8 enabled")
        return None

    def _cmd_lang(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._arity(args, 0, 1):
            return None
        if not args:
            self._multi("Language listing follows", [f"{t} {d}" for t, d in LANGUAGES.items()])
        elif args[0] == "*" or args[0].lower() in LANGUAGES:
            self._ok("en Language changed to English")
        else:
            self._err("Unsupported language")
        return None

    def _capabilities(self) -> list[str]:
        options = self._options
        caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
        if self._plaintext_ok():
            caps.insert(1, "USER")
        mechanisms = self._mechanisms()
        if mechanisms:
            caps.append("SASL " + " ".join(mechanisms))
        if self._stls_offered():
            caps.append("STLS")
        caps.append(f"EXPIRE {options.expire}")
        if options.login_delay:
            caps.append(f"LOGIN-DELAY {options.login_delay}")
        caps += ["UTF8 USER", "LANG"]
        if options.implementation:
            caps.append(f"IMPLEMENTATION {options.implementation}")
        return caps

    def _cmd_capa(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._arity(args, 0, 0):
            return None
        self._multi("Capability list follows", self._capabilities())
        return None

    def _auth_failed(self, *, temporary: bool) -> None:
        if temporary:
            self._err("Authentication service temporarily unavailable", RespCode.SYS_TEMP)
            return
        self._auth_failures += 1
        self._account = None
        if self._auth_failures >= self._options.max_auth_failures:
            self._err("Authentication failed; too many failures, closing", RespCode.AUTH)
            self._close("auth-failures")
        else:
            self._err("Authentication failed", RespCode.AUTH)

    def _login_refused(self, code: RespCode, text: str) -> None:
        # RFC 2449 §8.1: these codes follow *successful* authentication; the
        # session stays in AUTHORIZATION and the client may try again later.
        self._account = None
        self._err(text, code)

    def _open(self, messages: Sequence[MessageEntry]) -> None:
        self._messages = messages
        self._live_octets = sum(m.size for m in messages)
        self._state = State.TRANSACTION
        self._ok(f"Maildrop has {len(messages)} messages ({self._live_octets} octets)")

    # ------------------------------------------------------------ TRANSACTION

    def _cmd_stat(self, rest: bytes, args: list[str]) -> Event | None:
        if self._arity(args, 0, 0):
            self._ok(f"{len(self._messages) - len(self._deleted)} {self._live_octets}")
        return None

    def _cmd_list(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._arity(args, 0, 1):
            return None
        if args:
            index = self._message_index(args[0])
            if index is not None:
                self._ok(f"{index + 1} {self._messages[index].size}")
            return None
        count = len(self._messages) - len(self._deleted)
        self._listing(f"{count} messages ({self._live_octets} octets)", uids=False)
        return None

    def _cmd_uidl(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._arity(args, 0, 1):
            return None
        if args:
            index = self._message_index(args[0])
            if index is not None:
                self._ok(f"{index + 1} {self._messages[index].uid}")
            return None
        self._listing("Unique-ID listing follows", uids=True)
        return None

    def _listing(self, first: str, *, uids: bool) -> None:
        # One comprehension and one join: a 100,000-message UIDL is a hot path.
        deleted = self._deleted
        messages = enumerate(self._messages, start=1)
        if uids:
            lines = [f"{n} {m.uid}\r\n" for n, m in messages if n - 1 not in deleted]
        else:
            lines = [f"{n} {m.size}\r\n" for n, m in messages if n - 1 not in deleted]
        self._out.append(f"+OK {first}\r\n{''.join(lines)}.\r\n".encode())

    def _cmd_retr(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._arity(args, 1, 1):
            return None
        index = self._message_index(args[0])
        if index is None:
            return None
        self._stuffer = DotStuffer()
        self._retr_index = index
        return MessageRequested(index=index)

    def _cmd_top(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._arity(args, 2, 2):
            return None
        lines = args[1]
        if not (lines.isascii() and lines.isdigit()):
            self._bad("Invalid line count")
            return None
        index = self._message_index(args[0])
        if index is None:
            return None
        self._stuffer = DotStuffer(top_lines=int(lines))
        self._retr_index = None
        return MessageRequested(index=index, top_lines=int(lines))

    def _message_opened(self) -> None:
        if self._retr_index is not None:
            self._ok(f"{self._messages[self._retr_index].size} octets")
        else:
            self._ok("Top of message follows")
        self._waiting = _Wait.MESSAGE_DATA

    def _message_end(self) -> None:
        assert self._stuffer is not None
        self._out.append(self._stuffer.finish())
        self._stuffer = None
        if self._retr_index is not None:
            self._stats[0] += 1
            self._stats[1] += self._messages[self._retr_index].size
            self._retrieved.add(self._retr_index)
            self._retr_index = None
        else:
            self._stats[2] += 1

    def _cmd_dele(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._arity(args, 1, 1):
            return None
        index = self._message_index(args[0])
        if index is not None:
            self._deleted.add(index)
            self._live_octets -= self._messages[index].size
            self._ok(f"Message {index + 1} deleted")
        return None

    def _cmd_noop(self, rest: bytes, args: list[str]) -> Event | None:
        if self._arity(args, 0, 0):
            self._ok()
        return None

    def _cmd_rset(self, rest: bytes, args: list[str]) -> Event | None:
        if not self._arity(args, 0, 0):
            return None
        self._deleted.clear()
        self._live_octets = sum(m.size for m in self._messages)
        self._ok(f"Maildrop has {len(self._messages)} messages ({self._live_octets} octets)")
        return None

    def _cmd_quit(self, rest: bytes, args: list[str]) -> Event | None:
        if self._state is State.AUTHORIZATION:
            self._ok("mailslot signing off")
            self._close("quit")
            return None
        # RFC 1939 §6: QUIT in TRANSACTION enters UPDATE.
        self._state = State.UPDATE
        retrieved: frozenset[int] = frozenset()
        if self._options.expire == "0":
            # RFC 2449 §6.7: mail may not be left on the server once retrieved.
            self._deleted |= self._retrieved
        elif self._options.expire != "NEVER":
            # Retrieval starts the EXPIRE clock (``mailslot expire``).
            retrieved = frozenset(self._retrieved - self._deleted)
        if not self._deleted and not retrieved:
            left = len(self._messages)
            self._ok(
                f"mailslot signing off ({left} messages left)"
                if left
                else "mailslot signing off (maildrop empty)"
            )
            self._close("quit")
            return None
        self._stats[3] = len(self._deleted)
        self._stats[4] = sum(self._messages[i].size for i in self._deleted)
        return CommitRequested(indexes=frozenset(self._deleted), retrieved=retrieved)


# Command dispatch, built once for the class (not per session).
_HANDLERS: dict[Verb, Callable[[Session, bytes, list[str]], Event | None]] = {
    Verb.USER: Session._cmd_user,
    Verb.PASS: Session._cmd_pass,
    Verb.APOP: Session._cmd_apop,
    Verb.AUTH: Session._cmd_auth,
    Verb.STLS: Session._cmd_stls,
    Verb.UTF8: Session._cmd_utf8,
    Verb.LANG: Session._cmd_lang,
    Verb.CAPA: Session._cmd_capa,
    Verb.STAT: Session._cmd_stat,
    Verb.LIST: Session._cmd_list,
    Verb.RETR: Session._cmd_retr,
    Verb.DELE: Session._cmd_dele,
    Verb.NOOP: Session._cmd_noop,
    Verb.RSET: Session._cmd_rset,
    Verb.TOP: Session._cmd_top,
    Verb.UIDL: Session._cmd_uidl,
    Verb.QUIT: Session._cmd_quit,
}


def _decode_base64(text: str) -> bytes | None:
    """Strict base64 (RFC 4648, no whitespace or junk), or None."""
    try:
        return binascii.a2b_base64(text.encode("ascii"), strict_mode=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
