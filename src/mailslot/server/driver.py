"""The POP3 connection driver: pumps bytes between an asyncio stream and a
sans-I/O ``pop3.Session`` and fulfils the session's requests through a
``Backend``.

It knows no protocol rules.  It reads only when the session asks for data,
so pipelined input waits in the kernel (TCP flow control) rather than in
memory, and it awaits ``drain()`` after every message chunk, so a client
that does not read cannot make the server buffer unbounded output.

Whatever ends the connection (QUIT, EOF, reset, timeout, server shutdown,
an unexpected exception), the maildrop lock is released in ``finally`` and
nothing is deleted unless the session reached UPDATE through QUIT.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, assert_never

from mailslot.pop3.events import (
    ApopRequested,
    AuthFailed,
    AuthRequested,
    AuthSucceeded,
    CloseRequested,
    CommitDone,
    CommitFailed,
    CommitRequested,
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
)
from mailslot.pop3.session import Session, SessionOptions, SessionStatistics
from mailslot.store import Maildrop, MaildropError, MessageGone
from mailslot.store import MaildropBusy as StoreBusy

log = logging.getLogger("mailslot.pop3")

READ_SIZE = 65536
MESSAGE_CHUNK = 256 * 1024


class LoginTooSoon(Exception):
    """The account's LOGIN-DELAY has not passed (RFC 2449 §8.1.1)."""


class Backend(Protocol):
    """What the driver needs from the rest of mailslot."""

    async def authenticate(self, username: str, password: str, remote: str) -> str | None:
        """The canonical account name, or None for bad credentials."""
        ...

    async def open_maildrop(self, account: str) -> Maildrop:
        """Open and lock; raises store.MaildropBusy, LoginTooSoon, MaildropError."""
        ...

    async def commit(self, maildrop: Maildrop, indexes: frozenset[int]) -> None: ...

    async def close_maildrop(self, maildrop: Maildrop) -> None: ...

    def new_timestamp(self) -> str: ...


@dataclass(frozen=True, slots=True, kw_only=True)
class DriverOptions:
    session: SessionOptions
    autologout: float  # RFC 1939 §3: at least 10 minutes in production


class _Closed(Exception):
    pass


class Connection:
    """One POP3 connection.  ``run()`` returns when it is over."""

    __slots__ = ("_backend", "_maildrop", "_options", "_reader", "_session", "_writer", "remote")

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        backend: Backend,
        options: DriverOptions,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._backend = backend
        self._options = options
        self._maildrop: Maildrop | None = None
        peer = writer.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else str(peer or "unknown")
        self._session = Session(options=options.session, greeting_timestamp=backend.new_timestamp())

    def statistics(self) -> SessionStatistics:
        return self._session.statistics()

    async def run(self) -> str:
        """Serve the connection; returns why it ended."""
        reason = "error"
        try:
            reason = await self._loop()
        except (ConnectionError, _Closed):
            reason = "disconnected"
        except asyncio.CancelledError:
            reason = "shutdown"
            raise
        except Exception:
            log.exception("pop3: internal error, remote=%s", self.remote)
            self._writer.write(b"-ERR [SYS/TEMP] Internal server error\r\n")
        finally:
            if self._maildrop is not None:
                maildrop, self._maildrop = self._maildrop, None
                await self._backend.close_maildrop(maildrop)
            self._writer.close()
            _log_session_end(self, reason)
        return reason

    async def _loop(self) -> str:
        session = self._session
        while True:
            event = session.next_event()
            data = session.data_to_send()
            if data:
                self._writer.write(data)
            match event:
                case NeedData():
                    await self._read()
                case AuthRequested(username=username, password=password):
                    account = await self._backend.authenticate(username, password, self.remote)
                    session.send(AuthSucceeded(account=account) if account else AuthFailed())
                case ApopRequested():
                    session.send(AuthFailed())
                case MaildropRequested(account=account):
                    session.send(await self._open(account))
                case MessageRequested(index=index, top_lines=_):
                    await self._stream(index)
                case CommitRequested(indexes=indexes):
                    session.send(await self._commit(indexes))
                case CloseRequested(reason=reason):
                    await self._drain()
                    return reason
                case _:
                    assert_never(event)

    async def _read(self) -> None:
        await self._drain()
        try:
            async with asyncio.timeout(self._options.autologout):
                data = await self._reader.read(READ_SIZE)
        except TimeoutError:
            self._session.timed_out()
            return
        if data:
            self._session.receive_data(data)
        else:
            self._session.receive_eof()

    async def _drain(self) -> None:
        transport = self._writer.transport
        if transport.get_write_buffer_size() == 0:
            return
        try:
            async with asyncio.timeout(self._options.autologout):
                await self._writer.drain()
        except TimeoutError:
            raise _Closed from None

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
            log.error("pop3: cannot open maildrop of %s: %s", _printable(account), exc)
            return MaildropFailed(permanent=exc.permanent)
        return MaildropOpened(messages=self._maildrop.messages)

    async def _stream(self, index: int) -> None:
        session = self._session
        assert self._maildrop is not None
        try:
            message = self._maildrop.open_message(index)
        except MessageGone:
            session.send(MessageUnavailable())
            return
        with message:
            session.send(MessageOpened())
            while not session.message_complete:
                chunk = message.read(MESSAGE_CHUNK)
                if not chunk:
                    break
                session.send(MessageData(chunk))
                self._writer.write(session.data_to_send())
                await self._drain()
        session.send(MessageEnd())

    async def _commit(self, indexes: frozenset[int]) -> CommitDone | CommitFailed:
        assert self._maildrop is not None
        try:
            await self._backend.commit(self._maildrop, indexes)
        except MaildropError as exc:
            log.error("pop3: commit failed: %s", exc)
            return CommitFailed()
        return CommitDone()


def _printable(text: str | None) -> str:
    """Escape control characters so a user name cannot forge log lines."""
    if text is None:
        return "-"
    if text.isprintable() and " " not in text:
        return text
    return text.encode("unicode_escape").decode("ascii").replace(" ", "\\x20")


def _log_session_end(connection: Connection, reason: str) -> None:
    stats = connection.statistics()
    log.info(
        "pop3: session end user=%s remote=%s reason=%s retr=%d/%d top=%d dele=%d/%d "
        "messages=%d/%d commands=%d bad=%d",
        _printable(stats.account),
        connection.remote,
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


ConnectionHandler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
