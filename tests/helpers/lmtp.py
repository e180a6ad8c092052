"""LMTP test helpers.

- ``LmtpHarness``: an in-memory driver for the sans-I/O ``LmtpSession``
  (bytes in, bytes out), with a fixed set of known users.
- ``LmtpThreadServer``: a real ``LmtpListener`` (TCP on 127.0.0.1:0 and,
  optionally, a unix socket) on its own event loop in a thread, over a real
  ``UserDB`` and ``MaildirStore`` built from test ``Settings``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailslot.auth import Account, HashParams, PasswordHasher, UserDB
from mailslot.config import Settings
from mailslot.delivery.lmtp import (
    OVER_QUOTA,
    UNKNOWN_USER,
    CloseRequested,
    DeliveryResult,
    DeliveryResults,
    LmtpSession,
    LmtpSessionOptions,
    MessageComplete,
    MessageData,
    MessageDiscarded,
    NeedData,
    RecipientAccepted,
    RecipientRequested,
)
from mailslot.server.lmtp import (
    DeliveryStore,
    LmtpListener,
    LmtpOptions,
    QuotaLookup,
    UserDBResolver,
)
from mailslot.store.maildir import MaildirStore
from tests.helpers.loop_thread import LoopThread

HOSTNAME = "mx.test"
DELIVERED = DeliveryResult(True, 250, "2.0.0", "Delivered")
TEMPFAIL = DeliveryResult(False, 451, "4.3.0", "Temporary failure, try again later")


@dataclass(frozen=True)
class Delivered:
    sender: str
    recipients: tuple[str, ...]  # account keys
    body: bytes


@dataclass
class LmtpHarness:
    """Answers the session's requests from ``users`` (addresses, lower-case)."""

    options: LmtpSessionOptions = field(
        default_factory=lambda: LmtpSessionOptions(hostname=HOSTNAME)
    )
    users: frozenset[str] = frozenset({"alice@example.org", "bob@example.org", "carol@example.org"})
    full: frozenset[str] = frozenset()  # over quota at RCPT
    failing: frozenset[str] = frozenset()  # delivery fails temporarily
    delivered: list[Delivered] = field(default_factory=list)
    discarded: int = 0
    closed: str | None = None
    events: list[object] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.session = LmtpSession(options=self.options)
        self.greeting = self.session.data_to_send()
        self._body = bytearray()

    def client_sends(self, data: bytes, *, byte_at_a_time: bool = False) -> bytes:
        if not byte_at_a_time:
            self.session.receive_data(data)
            return self.run()
        out = []
        for i in range(len(data)):
            self.session.receive_data(data[i : i + 1])
            out.append(self.run())
        return b"".join(out)

    def client_closes(self) -> bytes:
        self.session.receive_eof()
        return self.run()

    def run(self) -> bytes:
        session = self.session
        out: list[bytes] = []
        while True:
            event = session.next_event()
            out.append(session.data_to_send())
            self.events.append(event)
            match event:
                case NeedData():
                    break
                case CloseRequested(reason=reason):
                    self.closed = reason
                    break
                case RecipientRequested(address=address):
                    key = address.lower()
                    if key not in self.users:
                        session.send(UNKNOWN_USER)
                    elif key in self.full:
                        session.send(OVER_QUOTA)
                    else:
                        session.send(RecipientAccepted(account_key=key))
                case MessageData(chunk=chunk):
                    self._body += chunk
                case MessageDiscarded():
                    self._body.clear()
                    self.discarded += 1
                case MessageComplete(sender=sender, recipients=recipients):
                    keys = tuple(r.account_key for r in recipients)
                    self.delivered.append(Delivered(sender, keys, bytes(self._body)))
                    self._body.clear()
                    session.send(
                        DeliveryResults(
                            [TEMPFAIL if k in self.failing else DELIVERED for k in keys]
                        )
                    )
        return b"".join(out)


LHLO_REPLY = (
    b"250-mx.test\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE %d\r\n"
)


# Built here rather than through server/app.py so that these tests depend
# only on the user database and the store, not on how the app wires them.
def open_users(settings: Settings) -> UserDB:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    hasher = PasswordHasher(HashParams(time_cost=1, memory_kib=8, parallelism=1))
    return UserDB(settings.user_db_path, hasher=hasher, default_domain=settings.default_domain)


def open_maildir_store(settings: Settings) -> MaildirStore:
    return MaildirStore(settings.mail_template, hostname=settings.greeting_hostname)


def add_users(settings: Settings, password: str, *names: str) -> list[Account]:
    with open_users(settings) as users:
        return [users.add(name, password) for name in names]


@dataclass
class LmtpThreadServer(LoopThread):
    """An ``LmtpListener`` on its own event loop in a thread."""

    settings: Settings
    unix_path: Path | None = None
    quota: QuotaLookup | None = None
    options: LmtpOptions = field(default_factory=LmtpOptions)
    store: DeliveryStore | None = None  # default: the settings' MaildirStore
    address: tuple[str, int] = ("", 0)
    listener: LmtpListener | None = None
    _stop: asyncio.Event | None = None

    async def _main(self) -> None:
        users = open_users(self.settings)
        try:
            resolver = UserDBResolver(users, default_domain=self.settings.default_domain)
            self.listener = LmtpListener(
                resolver=resolver,
                store=self.store or open_maildir_store(self.settings),
                options=self.options,
                quota=self.quota,
            )
            self.address = (await self.listener.listen_tcp("127.0.0.1", 0))[0]
            if self.unix_path is not None:
                await self.listener.listen_unix(self.unix_path)
            self._stop = asyncio.Event()
            self._ready.set()
            await self._stop.wait()
            await self.listener.shutdown(grace=5)
        finally:
            users.close()

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self._stop.set)
            self._thread.join(30)

    def wait_idle(self, timeout: float = 10) -> None:
        """Wait until no connection is open (each has finished its cleanup)."""
        assert self.listener is not None
        deadline = time.monotonic() + timeout
        while self.listener.active_connections:
            if time.monotonic() > deadline:
                raise TimeoutError("connections still open")
            time.sleep(0.01)


@contextlib.contextmanager
def running_lmtp(
    settings: Settings,
    *,
    unix_path: Path | None = None,
    quota: QuotaLookup | None = None,
    options: LmtpOptions | None = None,
    store: DeliveryStore | None = None,
) -> Iterator[LmtpThreadServer]:
    if options is None:
        # As the app builds them: the greeting names the configured host.
        options = LmtpOptions(session=LmtpSessionOptions(hostname=settings.greeting_hostname))
    server = LmtpThreadServer(
        settings, unix_path=unix_path, quota=quota, options=options, store=store
    )
    server.start()
    try:
        yield server
    finally:
        server.stop()


def maildir_files(settings: Settings, account: str, sub: str = "new") -> list[Path]:
    user, _, domain = account.partition("@")
    path = Path(open_maildir_store(settings).maildir_path(user, domain or settings.default_domain))
    directory = path / sub
    if not directory.is_dir():
        return []
    return sorted(directory / name for name in os.listdir(directory))
