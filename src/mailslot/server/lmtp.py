"""The LMTP listener and connection driver: pumps bytes between an asyncio
stream (TCP or a unix socket) and a sans-I/O ``delivery.lmtp.LmtpSession``,
and fulfils its requests through a ``RecipientResolver``, an optional quota
lookup and a ``DeliveryStore``.

Theory of operation
-------------------
- It knows no protocol rules.  It reads only when the session asks for data
  (``NeedData``), so pipelined input waits in the kernel, not in memory; an
  idle peer is dropped after ``idle_timeout`` with ``421 4.4.2``.
- RCPT: the resolver (blocking: SQLite) runs in a worker thread.  ``None``
  is ``550 5.1.1``; an exception is ``451 4.3.0``; an account already at its
  quota (messages or octets, from ``quota(account)`` and the store's
  ``usage``) is ``452 4.2.2``.
- DATA: the message text is spooled to an anonymous temporary file
  (``tempfile.TemporaryFile``: nothing to clean up, even after a crash) in
  ``spool_dir`` or the system's temporary directory.  Memory use does not
  grow with the message.
- Final dot: for each accepted recipient in turn, a worker thread checks the
  quota again with the real size and calls ``store.deliver`` with
  ``Return-Path:`` and ``Delivered-To:`` lines prepended to the spooled
  text.  ``MaildirStore.deliver`` returns only once the message is fsynced
  and linked into ``new/``, so a ``250`` always follows stable storage
  (DESIGN.md, invariants).  A temporary ``DeliveryError`` is ``452 4.3.1``
  for a full disk and ``451 4.3.0`` otherwise; anything unexpected is
  logged and ``451 4.3.0``.  Never ``250`` for mail not on disk.
- A connection that ends before the final dot (EOF, reset, timeout,
  shutdown) delivers nothing: the spool is closed and so vanishes.

``LmtpListener`` owns the listening sockets (TCP and unix) and the
connection tasks; ``shutdown`` stops accepting, lets connections finish for a
grace period, then cancels them (uvicorn's order, like ``server/app.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import io
import logging
import os
import stat
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, BinaryIO, Protocol, assert_never

from mailslot.auth import Account, InvalidName, UserDB, parse_login
from mailslot.delivery.lmtp import (
    LOOKUP_FAILED,
    OVER_QUOTA,
    UNKNOWN_USER,
    CloseRequested,
    DeliveryResult,
    DeliveryResults,
    LmtpSession,
    LmtpSessionOptions,
    LmtpStatistics,
    MessageComplete,
    MessageData,
    MessageDiscarded,
    NeedData,
    Recipient,
    RecipientAccepted,
    RecipientRejected,
    RecipientRequested,
)
from mailslot.logfmt import printable
from mailslot.server.metrics import Metrics
from mailslot.store import DeliveryError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

__all__ = [
    "DeliveryStore",
    "LmtpConnection",
    "LmtpListener",
    "LmtpOptions",
    "QuotaLookup",
    "RecipientResolver",
    "UserDBResolver",
]

log = logging.getLogger("mailslot.lmtp")

READ_SIZE = 65536
TOO_MANY_CONNECTIONS = b"421 4.3.2 Too many connections, try again later\r\n"
INTERNAL_ERROR = b"421 4.3.0 Internal server error, closing connection\r\n"

DELIVERED = DeliveryResult(True, 250, "2.0.0", "Delivered")
MAILBOX_FULL = DeliveryResult(False, 452, "4.2.2", "Mailbox full")
SYSTEM_FULL = DeliveryResult(False, 452, "4.3.1", "Insufficient system storage")
TEMPORARY_FAILURE = DeliveryResult(False, 451, "4.3.0", "Temporary failure, try again later")
PERMANENT_FAILURE = DeliveryResult(False, 550, "5.2.0", "Mailbox unavailable")
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


# ---------------------------------------------------------------- interfaces


class RecipientResolver(Protocol):
    """Who an RCPT address delivers to.  Blocking: called in a worker thread."""

    def resolve(self, address: str) -> Account | None:
        """The account, or None for an unknown or invalid address."""
        ...


QuotaLookup = Callable[[Account], tuple[int | None, int | None]]
"""``quota(account) -> (max messages, max octets)``; None means no limit.
Blocking: called in a worker thread."""


class DeliveryStore(Protocol):
    """What delivery needs from a store (``MaildirStore`` has both)."""

    def deliver(self, user: str, domain: str, message: BinaryIO) -> str: ...

    def usage(self, user: str, domain: str) -> tuple[int, int]: ...


class UserDBResolver:
    """``RecipientResolver`` (and ``QuotaLookup``) over a ``UserDB``."""

    __slots__ = ("_default_domain", "_users")

    def __init__(self, users: UserDB, *, default_domain: str) -> None:
        self._users = users
        self._default_domain = default_domain

    def resolve(self, address: str) -> Account | None:
        try:
            account = parse_login(address, default_domain=self._default_domain)
        except InvalidName:
            return None
        try:
            record = self._users.get(account.name)
        except InvalidName:
            return None
        return None if record is None else record.account

    def quota(self, account: Account) -> tuple[int | None, int | None]:
        """The record's ``quota_messages``/``quota_bytes`` when it has them
        (None, or a missing field, is no limit)."""
        record = self._users.get(account.name)
        if record is None:
            return None, None
        return _limit(getattr(record, "quota_messages", None)), _limit(
            getattr(record, "quota_bytes", None)
        )


def _limit(value: object) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class LmtpOptions:
    session: LmtpSessionOptions = field(default_factory=LmtpSessionOptions)
    idle_timeout: float = 300.0  # RFC 5321 §4.5.3.2.7: server timeout, 5 minutes
    max_connections: int = 100
    spool_dir: str | None = None  # None: the system's temporary directory
    socket_mode: int = 0o660  # of unix sockets: the MTA's group may connect

    def __post_init__(self) -> None:
        if self.idle_timeout <= 0:
            raise ValueError("idle_timeout must be positive")
        if self.max_connections < 1:
            raise ValueError("max_connections must be positive")


class _Closed(Exception):
    pass


class _OverQuota(Exception):
    pass


# ---------------------------------------------------------------- a connection


class LmtpConnection:
    """One LMTP connection.  ``run()`` returns when it is over."""

    __slots__ = (
        "_accounts",
        "_metrics",
        "_options",
        "_quota",
        "_reader",
        "_resolver",
        "_session",
        "_spool",
        "_spool_error",
        "_store",
        "_writer",
        "remote",
    )

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        resolver: RecipientResolver,
        store: DeliveryStore,
        options: LmtpOptions,
        quota: QuotaLookup | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._reader = reader
        self._writer = writer
        self._resolver = resolver
        self._store = store
        self._options = options
        self._quota = quota
        self._accounts: dict[str, Account] = {}
        self._spool: BinaryIO | None = None
        self._spool_error: OSError | None = None
        peer = writer.get_extra_info("peername")
        self.remote = str(peer[0]) if isinstance(peer, tuple) else str(peer or "unix")
        self._session = LmtpSession(options=options.session)

    def statistics(self) -> LmtpStatistics:
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
            log.exception("lmtp: internal error, remote=%s", self.remote)
            self._writer.write(INTERNAL_ERROR)
        finally:
            self._drop_spool()
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
                case RecipientRequested(address=address, size=size):
                    session.send(await self._recipient(address, size))
                case MessageData(chunk=chunk):
                    self._spool_write(chunk)
                case MessageDiscarded():
                    self._drop_spool()
                case MessageComplete(sender=sender, recipients=recipients):
                    results = await self._deliver_all(sender, recipients)
                    session.send(DeliveryResults(results))
                case CloseRequested(reason=reason):
                    await self._drain()
                    return reason
                case _:
                    assert_never(event)

    async def _read(self) -> None:
        await self._drain()
        try:
            async with asyncio.timeout(self._options.idle_timeout):
                data = await self._reader.read(READ_SIZE)
        except TimeoutError:
            self._session.timed_out()
            return
        if data:
            self._session.receive_data(data)
        else:
            self._session.receive_eof()

    async def _drain(self) -> None:
        if self._writer.transport.get_write_buffer_size() == 0:
            return
        try:
            async with asyncio.timeout(self._options.idle_timeout):
                await self._writer.drain()
        except TimeoutError:
            raise _Closed from None

    # ------------------------------------------------------------ RCPT

    async def _recipient(
        self, address: str, size: int | None
    ) -> RecipientAccepted | RecipientRejected:
        try:
            account = await asyncio.to_thread(self._resolve, address, size)
        except _OverQuota:
            return OVER_QUOTA
        except Exception:
            log.exception("lmtp: recipient lookup failed, remote=%s", self.remote)
            return LOOKUP_FAILED
        if account is None:
            log.info("lmtp: unknown recipient to=<%s> remote=%s", printable(address), self.remote)
            return UNKNOWN_USER
        self._accounts[account.name] = account
        return RecipientAccepted(account_key=account.name)

    def _resolve(self, address: str, size: int | None) -> Account | None:
        """In a worker thread: resolve, then refuse an account already full."""
        account = self._resolver.resolve(address)
        if account is not None:
            self._check_quota(account, size or 0)
        return account

    def _check_quota(self, account: Account, size: int) -> None:
        """Raise ``_OverQuota`` unless one more message of ``size`` octets
        fits (RFC 3463 X.2.2).  Blocking."""
        if self._quota is None:
            return
        max_messages, max_octets = self._quota(account)
        if max_messages is None and max_octets is None:
            return
        messages, octets = self._store.usage(account.user, account.domain)
        if max_messages is not None and messages >= max_messages:
            raise _OverQuota
        if max_octets is not None and (octets >= max_octets or octets + size > max_octets):
            raise _OverQuota

    # ------------------------------------------------------------ DATA

    def _spool_write(self, chunk: bytes) -> None:
        if self._spool_error is not None:
            return
        try:
            if self._spool is None:
                self._spool = tempfile.TemporaryFile(  # noqa: SIM115 (closed in _drop_spool)
                    dir=self._options.spool_dir, prefix="lmtp-"
                )
            self._spool.write(chunk)
        except OSError as exc:
            # Keep reading to the final dot, then refuse every recipient.
            log.error("lmtp: cannot spool message: %s", exc)
            self._spool_error = exc
            self._drop_spool(keep_error=True)

    def _drop_spool(self, *, keep_error: bool = False) -> None:
        spool, self._spool = self._spool, None
        if not keep_error:
            self._spool_error = None
        if spool is not None:
            with contextlib.suppress(OSError):
                spool.close()

    async def _deliver_all(
        self, sender: str, recipients: Sequence[Recipient]
    ) -> list[DeliveryResult]:
        results = await self._deliver_each(sender, recipients)
        if self._metrics is not None:
            for result in results:
                self._metrics.delivery(result.code)
        return results

    async def _deliver_each(
        self, sender: str, recipients: Sequence[Recipient]
    ) -> list[DeliveryResult]:
        try:
            if self._spool_error is not None:
                failed = SYSTEM_FULL if _is_full(self._spool_error) else TEMPORARY_FAILURE
                return [failed for _ in recipients]
            # No spool: an empty message ("DATA", then "." at once).
            spool: BinaryIO = self._spool if self._spool is not None else io.BytesIO()
            spool.flush()
            newline = _newline_of(spool)
            return [
                await self._deliver_one(spool, newline, sender, recipient)
                for recipient in recipients
            ]
        finally:
            self._drop_spool()

    async def _deliver_one(
        self, spool: BinaryIO, newline: bytes, sender: str, recipient: Recipient
    ) -> DeliveryResult:
        account = self._accounts[recipient.account_key]
        prefix = (
            b"Return-Path: <" + sender.encode() + b">" + newline
            + b"Delivered-To: " + recipient.address.encode() + newline
        )  # fmt: skip
        try:
            name, size = await asyncio.to_thread(self._store_message, account, prefix, spool)
        except _OverQuota:
            return MAILBOX_FULL
        except DeliveryError as exc:
            log.error("lmtp: delivery to %s failed: %s", printable(account.name), exc)
            if not exc.temporary:
                return PERMANENT_FAILURE
            return SYSTEM_FULL if _is_full(exc.__cause__) else TEMPORARY_FAILURE
        except Exception:
            log.exception("lmtp: delivery to %s failed", printable(account.name))
            return TEMPORARY_FAILURE
        log.info(
            "lmtp: delivered from=<%s> to=<%s> size=%d file=%s",
            printable(sender),
            printable(recipient.address),
            size,
            printable(name),
        )
        return DELIVERED

    def _store_message(self, account: Account, prefix: bytes, spool: BinaryIO) -> tuple[str, int]:
        """In a worker thread: quota check, then a durable delivery."""
        spool.seek(0, os.SEEK_END)
        size = len(prefix) + spool.tell()
        self._check_quota(account, size)
        spool.seek(0)
        message = io.BufferedReader(_Prefixed(prefix, spool), buffer_size=1 << 20)
        return self._store.deliver(account.user, account.domain, message), size


class _Prefixed(io.RawIOBase):
    """``prefix`` then the rest of ``body``, read-only, without copying the body."""

    def __init__(self, prefix: bytes, body: BinaryIO) -> None:
        super().__init__()
        self._prefix = memoryview(prefix)
        self._body = body

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        if self._prefix:
            count = min(len(view), len(self._prefix))
            view[:count] = self._prefix[:count]
            self._prefix = self._prefix[count:]
            return count
        data = self._body.read(len(view))
        view[: len(data)] = data
        return len(data)


def _newline_of(spool: BinaryIO) -> bytes:
    """The message's own line end, for the lines we prepend: LF if its first
    line ends in a bare LF, else CRLF."""
    spool.seek(0)
    head = spool.read(8192)
    end = head.find(b"\n")
    return b"\n" if end >= 0 and head[end - 1 : end] != b"\r" else b"\r\n"


def _is_full(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in _FULL_ERRNOS


def _log_session_end(connection: LmtpConnection, reason: str) -> None:
    stats = connection.statistics()
    log.info(
        "lmtp: session end remote=%s reason=%s messages=%d deliveries=%d octets=%d "
        "commands=%d bad=%d",
        connection.remote,
        reason,
        stats.messages,
        stats.deliveries,
        stats.octets,
        stats.commands,
        stats.bad_commands,
    )


# ---------------------------------------------------------------- the listener


class LmtpListener:
    """The LMTP listening sockets of one server process and their connections.

    ::

        listener = LmtpListener(resolver=..., store=..., options=..., quota=...)
        await listener.listen_tcp("127.0.0.1", 24)        # -> [("127.0.0.1", 24)]
        await listener.listen_unix("/run/mailslot/lmtp")  # -> the path
        ...
        await listener.shutdown(grace=10.0)
    """

    def __init__(
        self,
        *,
        resolver: RecipientResolver,
        store: DeliveryStore,
        options: LmtpOptions | None = None,
        quota: QuotaLookup | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._metrics = metrics
        self._resolver = resolver
        self._store = store
        self._options = options if options is not None else LmtpOptions()
        self._quota = quota
        self._servers: list[asyncio.Server] = []
        self._unix_paths: list[tuple[str, int, int]] = []  # path, st_dev, st_ino
        self._tasks: set[asyncio.Task[object]] = set()
        self._closing = False

    @property
    def active_connections(self) -> int:
        return len(self._tasks)

    async def listen_tcp(self, host: str, port: int) -> list[tuple[str, int]]:
        """Listen on ``host``:``port`` (0: any free port); returns the bound
        addresses."""
        server = await asyncio.start_server(
            self._handle, host, port, reuse_address=True, backlog=1024
        )
        self._servers.append(server)
        bound = []
        for sock in server.sockets:
            address = sock.getsockname()
            bound.append((str(address[0]), int(address[1])))
            log.info("listening: lmtp on %s:%d", address[0], address[1])
        return bound

    async def listen_unix(self, path: str | os.PathLike[str]) -> str:
        """Listen on a unix socket at ``path`` (mode ``socket_mode``); a stale
        socket there is replaced, any other file is an error."""
        name = os.fspath(path)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(name).st_mode):
                raise FileExistsError(errno.EEXIST, "not a socket", name)
            os.unlink(name)
        server = await asyncio.start_unix_server(self._handle, name, backlog=1024)
        self._servers.append(server)
        os.chmod(name, self._options.socket_mode)
        info = os.lstat(name)
        self._unix_paths.append((name, info.st_dev, info.st_ino))
        log.info("listening: lmtp on unix:%s", name)
        return name

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        if self._closing or len(self._tasks) >= self._options.max_connections:
            writer.write(TOO_MANY_CONNECTIONS)
            writer.close()
            return
        self._tasks.add(task)
        try:
            connection = LmtpConnection(
                reader,
                writer,
                resolver=self._resolver,
                store=self._store,
                options=self._options,
                quota=self._quota,
                metrics=self._metrics,
            )
            await connection.run()
        except asyncio.CancelledError:
            # Cancelled by shutdown(); the connection has cleaned up.  Ending
            # normally keeps asyncio's stream callback from logging it.
            pass
        finally:
            self._tasks.discard(task)

    async def shutdown(self, grace: float = 10.0) -> None:
        """Stop accepting, let open connections finish for ``grace`` seconds,
        cancel the rest, and remove our unix sockets."""
        self._closing = True
        for server in self._servers:
            server.close()
        if self._tasks:
            _done, pending = await asyncio.wait(list(self._tasks), timeout=grace)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for server in self._servers:
            await server.wait_closed()
        self._servers.clear()
        for name, dev, ino in self._unix_paths:
            # Only our own socket: another process may have replaced it.
            with contextlib.suppress(OSError):
                info = os.lstat(name)
                if (info.st_dev, info.st_ino) == (dev, ino):
                    os.unlink(name)
        self._unix_paths.clear()
