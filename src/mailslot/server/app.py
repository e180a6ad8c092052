"""The server process: builds the parts from ``Settings``, runs the
listeners, enforces the connection cap, and shuts down in order.

Shutdown (SIGTERM/SIGINT): stop accepting → let open sessions end by
themselves for ``shutdown_grace`` seconds → cancel the rest.  A cancelled
session never reaches UPDATE, so it deletes nothing; its lock is released.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mailslot.auth import HashParams, PasswordHasher, UserDB
from mailslot.config import Address, Settings
from mailslot.pop3.session import SessionOptions
from mailslot.server.backend import StoreBackend
from mailslot.server.driver import Connection, DriverOptions
from mailslot.store.maildir import MaildirStore

log = logging.getLogger("mailslot.server")

TOO_MANY_CONNECTIONS = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"


@dataclass(frozen=True, slots=True)
class Listener:
    protocol: str
    address: Address


def open_user_db(settings: Settings) -> UserDB:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    hasher = PasswordHasher(
        HashParams(
            time_cost=settings.argon2_time_cost,
            memory_kib=settings.argon2_memory_kib,
            parallelism=1,
        )
    )
    return UserDB(settings.user_db_path, hasher=hasher, default_domain=settings.default_domain)


def open_store(settings: Settings) -> MaildirStore:
    return MaildirStore(settings.mail_template, hostname=settings.greeting_hostname)


class MailslotServer:
    """All listeners of one ``mailslot serve`` process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._users = open_user_db(settings)
        self._auth_executor = ThreadPoolExecutor(
            max_workers=settings.auth_workers, thread_name_prefix="auth"
        )
        self._backend = StoreBackend(
            users=self._users,
            store=open_store(settings),
            auth_executor=self._auth_executor,
            hostname=settings.greeting_hostname,
            default_domain=settings.default_domain,
            login_delay=settings.login_delay,
        )
        self._driver_options = DriverOptions(
            session=SessionOptions(
                expire=settings.expire,
                login_delay=settings.login_delay,
                implementation=settings.implementation,
                max_bad_commands=settings.max_bad_commands,
                max_auth_failures=settings.max_auth_failures,
            ),
            autologout=settings.autologout,
        )
        self._servers: list[asyncio.Server] = []
        self._tasks: set[asyncio.Task[object]] = set()
        self._stopping: asyncio.Event | None = None
        self.listeners: list[Listener] = []

    @property
    def active_connections(self) -> int:
        return len(self._tasks)

    async def start(self) -> list[Listener]:
        """Bind every listener; returns them with their actual ports."""
        self._stopping = asyncio.Event()
        for address in self._settings.pop3_listen:
            server = await asyncio.start_server(
                self._handle_pop3, address.host, address.port, reuse_address=True, backlog=1024
            )
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                listener = Listener("pop3", Address(host, port))
                self.listeners.append(listener)
                log.info("listening: pop3 on %s", listener.address)
        return self.listeners

    async def _handle_pop3(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        if len(self._tasks) >= self._settings.max_connections or (
            self._stopping is not None and self._stopping.is_set()
        ):
            writer.write(TOO_MANY_CONNECTIONS)
            writer.close()
            return
        self._tasks.add(task)
        try:
            connection = Connection(
                reader, writer, backend=self._backend, options=self._driver_options
            )
            await connection.run()
        except asyncio.CancelledError:
            # Cancelled by _shutdown() after the grace period.  The connection
            # has already cleaned up; finishing normally keeps asyncio's
            # stream callback (Python 3.11) from logging the cancellation.
            pass
        finally:
            self._tasks.discard(task)

    async def serve_until_stopped(self) -> None:
        """Run until ``stop()`` (or SIGTERM/SIGINT when installed)."""
        assert self._stopping is not None
        await self._stopping.wait()
        await self._shutdown()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)

    def stop(self) -> None:
        if self._stopping is not None and not self._stopping.is_set():
            log.info("stopping: no new connections; %d open", len(self._tasks))
            self._stopping.set()

    async def _shutdown(self) -> None:
        for server in self._servers:
            server.close()
        if self._tasks:
            _done, pending = await asyncio.wait(
                list(self._tasks), timeout=self._settings.shutdown_grace
            )
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        for server in self._servers:
            await server.wait_closed()
        self._auth_executor.shutdown(wait=False, cancel_futures=True)
        self._users.close()
        log.info("stopped")
