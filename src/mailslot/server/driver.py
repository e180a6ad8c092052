"""The POP3 connection driver: an ``asyncio.Protocol`` that pumps bytes
between a transport and a sans-I/O ``pop3.Session`` and fulfils the
session's requests through a ``Backend``.

It knows no protocol rules.  Theory of operation:

- ``data_received`` feeds the session and *pumps*: it takes events from the
  session until it needs more data.  Events that need no waiting (reading a
  message file) are served inline; events that need a thread (password
  hashing, opening a maildrop, deleting files) or a handshake (STLS) start
  one task, and nothing else is pumped until it finishes.
- While a task runs, or while the transport's write buffer is above its high
  water mark, reading is paused: pipelined input waits in the kernel (TCP
  flow control), never in memory, and a client that does not read its
  responses cannot make the server buffer unbounded output.
- An idle connection holds no task and no coroutine: just this object, its
  session and its transport.  Idle time is checked by a sweeper over all
  connections (``ConnectionRegistry``), not by a timer per command.
- Whatever ends the connection (QUIT, EOF, reset, autologout, shutdown, an
  unexpected exception), ``connection_lost`` releases the maildrop lock;
  nothing is deleted unless the session reached UPDATE through QUIT.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import ssl
from collections.abc import Callable, Coroutine, Generator
from dataclasses import dataclass
from typing import Any, BinaryIO, Protocol, assert_never, cast

from mailslot.logfmt import printable
from mailslot.pop3.events import (
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
    MessageOpened,
    MessageRequested,
    MessageUnavailable,
    NeedData,
    SaslChallenge,
    SaslRequested,
    SaslResponse,
    TlsRequested,
    TlsStarted,
)
from mailslot.pop3.session import Session, SessionOptions, SessionStatistics
from mailslot.sasl import Challenge, Outcome, Step, Success
from mailslot.store import Maildrop, MaildropError, MessageGone
from mailslot.store import MaildropBusy as StoreBusy

log = logging.getLogger("mailslot.pop3")

MESSAGE_CHUNK = 256 * 1024
INTERNAL_ERROR = b"-ERR [SYS/TEMP] Internal server error\r\n"

Flow = Generator[Step, object, Outcome]


class LoginTooSoon(Exception):
    """The account's LOGIN-DELAY has not passed (RFC 2449 §8.1.1)."""


class Backend(Protocol):
    """What the driver needs from the rest of mailslot."""

    def new_timestamp(self) -> str: ...

    async def authenticate(self, username: str, password: str, remote: str) -> str | None:
        """The canonical account name, or None for bad credentials."""
        ...

    async def apop(self, username: str, digest: str, timestamp: str, remote: str) -> str | None: ...

    def sasl_start(self, mechanism: str, initial_response: bytes | None) -> Flow: ...

    async def sasl_fulfil(self, step: Step) -> object:
        """Answer a mechanism's credential request (VerifyPassword, ...)."""
        ...

    async def sasl_outcome(self, outcome: Outcome, remote: str) -> str | None:
        """The canonical account for a successful exchange, None otherwise."""
        ...

    async def open_maildrop(self, account: str) -> Maildrop:
        """Open and lock; raises store.MaildropBusy, LoginTooSoon, MaildropError."""
        ...

    async def commit(
        self, maildrop: Maildrop, indexes: frozenset[int], retrieved: frozenset[int]
    ) -> None: ...

    def close_maildrop(self, maildrop: Maildrop) -> None: ...


class Registry(Protocol):
    """Tracks open connections (limits, idle sweeps, shutdown)."""

    def admit(self, connection: Pop3Connection) -> bytes | None:
        """None to admit, else the refusal line to send before closing."""
        ...

    def release(self, connection: Pop3Connection) -> None: ...

    def ended(self, stats: SessionStatistics, reason: str) -> None:
        """A session is over (after ``release``): count it."""
        ...

    def now(self) -> float: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverOptions:
    session: SessionOptions
    # Used instead of ``session`` for clients on a loopback address when the
    # operator trusts loopback (``auth.plaintext_on_loopback``).
    loopback_session: SessionOptions | None = None
    tls_context: ssl.SSLContext | None = None  # for STLS
    handshake_timeout: float = 30.0


class Pop3Connection(asyncio.Protocol):
    """One POP3 connection, plain, STLS-upgraded or implicit TLS."""

    __slots__ = (
        "_backend",
        "_closed",
        "_flow",
        "_maildrop",
        "_options",
        "_reading_paused",
        "_reason",
        "_registry",
        "_session",
        "_stream",
        "_task",
        "_transport",
        "_write_paused",
        "last_active",
        "remote",
    )

    def __init__(
        self,
        *,
        backend: Backend,
        options: DriverOptions,
        registry: Registry,
        remote: str = "",
    ) -> None:
        self._backend = backend
        self._options = options
        self._registry = registry
        self._session: Session | None = None
        self._transport: asyncio.Transport | None = None
        self._maildrop: Maildrop | None = None
        self._task: asyncio.Task[None] | None = None
        self._stream: BinaryIO | None = None
        self._flow: Flow | None = None
        self._write_paused = False
        self._reading_paused = False
        self._closed = False
        self._reason = "disconnected"
        self.last_active = registry.now()
        # The client's address: given when a PROXY protocol listener knows
        # it, else taken from the socket.
        self.remote = remote

    # ------------------------------------------------------------ asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        transport = cast(asyncio.Transport, transport)
        self._transport = transport
        if not self.remote:
            peer = transport.get_extra_info("peername")
            self.remote = str(peer[0]) if isinstance(peer, tuple) else "local"
        # Keep a whole message chunk or two in flight before pausing, so a fast
        # reader is never starved between chunks.
        transport.set_write_buffer_limits(high=2 * MESSAGE_CHUNK, low=MESSAGE_CHUNK // 2)
        refusal = self._registry.admit(self)
        if refusal is not None:
            self._closed = True
            transport.write(refusal)
            transport.close()
            return
        options = self._options.session
        if self._options.loopback_session is not None and _is_loopback(self.remote):
            options = self._options.loopback_session
        self._session = Session(options=options, greeting_timestamp=self._backend.new_timestamp())
        self._flush()

    def data_received(self, data: bytes) -> None:
        if self._session is None or self._closed:
            return
        self.last_active = self._registry.now()
        self._session.receive_data(data)
        self._pump()

    def eof_received(self) -> bool:
        if self._session is not None and not self._closed:
            self._session.receive_eof()
            self._pump()
        # Keep a plain transport half-open until we close it (the answers to
        # pipelined commands still go out); TLS transports cannot do that.
        return self._transport is not None and self._transport.get_extra_info("sslcontext") is None

    def pause_writing(self) -> None:
        self._write_paused = True

    def resume_writing(self) -> None:
        self._write_paused = False
        self.last_active = self._registry.now()
        if self._stream is not None:
            self._guarded(self._continue_stream)
        self._pump()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cleanup()

    # ------------------------------------------------------------ public

    def statistics(self) -> SessionStatistics | None:
        return self._session.statistics() if self._session is not None else None

    @property
    def waiting_on_server(self) -> bool:
        """A password check, maildrop open, commit or handshake is running."""
        return self._task is not None

    def timed_out(self) -> None:
        """Autologout (RFC 1939 §3): close without UPDATE.  A client that
        stopped reading in the middle of a response is cut off at once."""
        if self._session is None or self._closed:
            return
        if self._stream is not None and self._transport is not None:
            self._reason = "timeout"
            self._transport.abort()
            return
        self._session.timed_out()
        self._pump()

    def shutdown(self) -> None:
        """Server shutdown after the grace period: close; nothing is deleted."""
        self._reason = "shutdown"
        if self._task is not None:
            self._task.cancel()
        if self._transport is not None:
            self._transport.abort()

    # ------------------------------------------------------------ pumping

    def _pump(self) -> None:
        if self._closed or self._session is None:
            return
        try:
            self._pump_events(self._session)
        except Exception:
            self._internal_error()

    def _pump_events(self, session: Session) -> None:
        while self._task is None and self._stream is None and not self._write_paused:
            if self._closed:
                return
            event = session.next_event()
            self._flush()
            match event:
                case NeedData():
                    self._resume_reading()
                    return
                case CloseRequested(reason=reason):
                    self._close(reason)
                    return
                case MessageRequested(index=index):
                    self._start_stream(index)
                case TlsRequested():
                    self._spawn(self._start_tls())
                case (
                    AuthRequested()
                    | ApopRequested()
                    | SaslRequested()
                    | SaslResponse()
                    | MaildropRequested()
                    | CommitRequested()
                ):
                    self._spawn(self._serve(event))
                case _:
                    assert_never(event)
        self._pause_reading()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        self._pause_reading()
        self._task = asyncio.get_running_loop().create_task(coro)

    async def _serve(self, event: Event) -> None:
        session = self._session
        assert session is not None
        try:
            match event:
                case AuthRequested(username=username, password=password):
                    account = await self._backend.authenticate(username, password, self.remote)
                    session.send(AuthSucceeded(account=account) if account else AuthFailed())
                case ApopRequested(username=username, digest=digest, timestamp=timestamp):
                    account = await self._backend.apop(username, digest, timestamp, self.remote)
                    session.send(AuthSucceeded(account=account) if account else AuthFailed())
                case SaslRequested(mechanism=mechanism, initial_response=initial):
                    self._flow = self._backend.sasl_start(mechanism, initial)
                    await self._sasl_advance(None)
                case SaslResponse(data=data):
                    await self._sasl_advance(data)
                case MaildropRequested(account=account):
                    session.send(await self._open(account))
                case CommitRequested(indexes=indexes, retrieved=retrieved):
                    session.send(await self._commit(indexes, retrieved))
                case _:
                    raise AssertionError(f"unexpected {event!r}")
        except asyncio.CancelledError:
            raise
        except Exception:
            self._task = None
            self._internal_error()
            return
        self._task = None
        self._pump()

    async def _sasl_advance(self, reply: bytes | None) -> None:
        session = self._session
        flow = self._flow
        assert session is not None and flow is not None
        try:
            step = next(flow) if reply is None else flow.send(reply)
            while not isinstance(step, Challenge):
                answer = await self._backend.sasl_fulfil(step)
                step = flow.send(answer)
        except StopIteration as stop:
            self._flow = None
            outcome: Outcome = stop.value
            account = await self._backend.sasl_outcome(outcome, self.remote)
            if isinstance(outcome, Success) and account:
                session.send(AuthSucceeded(account=account))
            else:
                session.send(AuthFailed())
            return
        session.send(SaslChallenge(step.data))

    async def _start_tls(self) -> None:
        context = self._options.tls_context
        transport = self._transport
        session = self._session
        assert context is not None and transport is not None and session is not None
        loop = asyncio.get_running_loop()
        try:
            new_transport = await loop.start_tls(
                transport,
                self,
                context,
                server_side=True,
                ssl_handshake_timeout=self._options.handshake_timeout,
            )
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            log.info("pop3: STLS handshake failed, remote=%s: %s", self.remote, exc)
            self._reason = "tls-failed"
            transport.abort()
            self._cleanup()
            return
        if new_transport is None:  # pragma: no cover - closed during the handshake
            self._cleanup()
            return
        self._transport = new_transport
        self._reading_paused = False
        session.send(TlsStarted())
        self._task = None
        self._pump()

    # ------------------------------------------------------------ requests

    async def _open(
        self, account: str
    ) -> MaildropOpened | MaildropBusy | LoginDelayed | MaildropFailed:
        try:
            self._maildrop = await self._backend.open_maildrop(account)
        except StoreBusy:
            return MaildropBusy()
        except LoginTooSoon:
            return LoginDelayed()
        except MaildropError as exc:
            log.error("pop3: cannot open maildrop of %s: %s", printable(account), exc)
            return MaildropFailed(permanent=exc.permanent)
        if self._closed:  # the client left while the maildrop was opening
            self._release_maildrop()
            return MaildropFailed()
        return MaildropOpened(messages=self._maildrop.messages)

    async def _commit(
        self, indexes: frozenset[int], retrieved: frozenset[int]
    ) -> CommitDone | CommitFailed:
        assert self._maildrop is not None
        try:
            await self._backend.commit(self._maildrop, indexes, retrieved)
        except MaildropError as exc:
            log.error("pop3: commit failed: %s", exc)
            return CommitFailed()
        return CommitDone()

    def _start_stream(self, index: int) -> None:
        session = self._session
        assert session is not None and self._maildrop is not None
        try:
            stream = self._maildrop.open_message(index)
        except MessageGone:
            session.send(MessageUnavailable())
            return
        session.send(MessageOpened())
        self._stream = stream
        self._continue_stream()

    def _continue_stream(self) -> None:
        """Send message chunks until done or the transport asks us to wait."""
        session = self._session
        stream = self._stream
        assert session is not None and stream is not None
        transport = self._transport
        assert transport is not None
        # is_closing(): a peer that reset the connection makes writes no-ops
        # before connection_lost arrives; stop reading the file at once.
        while not self._write_paused and not self._closed and not transport.is_closing():
            chunk = b"" if session.message_complete else stream.read(MESSAGE_CHUNK)
            if chunk:
                session.send(MessageData(chunk))
                if len(chunk) < MESSAGE_CHUNK and not session.message_complete:
                    # Short read: most likely the end.  Read on before writing,
                    # so a small message goes out in one write with its status
                    # line and terminator.
                    continue
                if not session.message_complete:
                    self._flush()
                    continue
            self._stream = None
            stream.close()
            session.send(MessageEnd())
            self._flush()
            return

    # ------------------------------------------------------------ plumbing

    def _flush(self) -> None:
        assert self._session is not None
        parts = self._session.data_to_send_parts()
        if parts and self._transport is not None:
            if len(parts) == 1:
                self._transport.write(parts[0])
            else:
                self._transport.writelines(parts)

    def _pause_reading(self) -> None:
        if not self._reading_paused and self._transport is not None:
            self._reading_paused = True
            self._transport.pause_reading()

    def _resume_reading(self) -> None:
        if self._reading_paused and self._transport is not None:
            self._reading_paused = False
            self._transport.resume_reading()

    def _guarded(self, action: Callable[[], None]) -> None:
        try:
            action()
        except Exception:
            self._internal_error()

    def _internal_error(self) -> None:
        log.exception("pop3: internal error, remote=%s", self.remote)
        if self._transport is not None and not self._closed and self._stream is None:
            self._transport.write(INTERNAL_ERROR)
        self._close("error")

    def _close(self, reason: str) -> None:
        if self._closed:
            return
        self._reason = reason
        self._closed = True
        if self._transport is not None:
            self._transport.close()  # flushes what is buffered first

    def _release_maildrop(self) -> None:
        if self._maildrop is not None:
            maildrop, self._maildrop = self._maildrop, None
            self._backend.close_maildrop(maildrop)

    def _cleanup(self) -> None:
        session = self._session
        self._closed = True
        if session is None:  # refused at admission, or already cleaned up
            return
        self._session = None
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None
        if self._stream is not None:
            self._stream.close()
            self._stream = None
        self._flow = None
        self._release_maildrop()
        self._registry.release(self)
        stats = session.statistics()
        log_session_end(stats, self.remote, self._reason)
        self._registry.ended(stats, self._reason)


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def log_session_end(stats: SessionStatistics, remote: str, reason: str) -> None:
    log.info(
        "pop3: session end user=%s remote=%s reason=%s retr=%d/%d top=%d dele=%d/%d "
        "messages=%d/%d commands=%d bad=%d",
        printable(stats.account),
        remote,
        reason,
        stats.retrieved,
        stats.retrieved_octets,
        stats.top,
        stats.deleted,
        stats.deleted_octets,
        stats.messages,
        stats.octets,
        stats.commands,
        stats.bad_commands,
    )
