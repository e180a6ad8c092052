"""The driver's view of users and storage: password checks in a thread pool
sized for hashing, maildrop open/commit in the default executor, LOGIN-DELAY.

Every blocking call (argon2, SQLite, directory scans, fsync) runs off the
event loop.  A maildrop opened by a worker thread after its session was
cancelled is closed again, so no lock leaks.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor

from mailslot.auth import Account, UserDB, parse_login
from mailslot.server.driver import LoginTooSoon
from mailslot.store import Maildrop, MaildropStore

log = logging.getLogger("mailslot.auth")


class StoreBackend:
    """``driver.Backend`` over a ``UserDB`` and a ``MaildropStore``."""

    def __init__(
        self,
        *,
        users: UserDB,
        store: MaildropStore,
        auth_executor: Executor,
        hostname: str,
        default_domain: str,
        login_delay: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._users = users
        self._store = store
        self._auth_executor = auth_executor
        self._hostname = hostname
        self._default_domain = default_domain
        self._login_delay = login_delay
        self._clock = clock
        self._counter = itertools.count()

    def new_timestamp(self) -> str:
        # RFC 1939 §7: msg-id syntax, different for every greeting.
        return f"<{os.getpid()}.{time.time_ns()}.{next(self._counter)}@{self._hostname}>"

    async def authenticate(self, username: str, password: str, remote: str) -> str | None:
        loop = asyncio.get_running_loop()
        account = await loop.run_in_executor(
            self._auth_executor, self._users.verify, username, password
        )
        if account is None:
            log.info("auth: failed login, remote=%s", remote)
            return None
        return account.name

    async def open_maildrop(self, account: str) -> Maildrop:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._open, account)
        try:
            return await future
        except asyncio.CancelledError:
            future.add_done_callback(_close_if_opened)
            raise

    def _open(self, name: str) -> Maildrop:
        account = self._account(name)
        now = self._clock()
        if self._login_delay:
            record = self._users.get(name)
            last = record.last_login if record else None
            if last is not None and now - last < self._login_delay:
                raise LoginTooSoon
        maildrop = self._store.open(account.user, account.domain)
        try:
            self._users.record_login(account, now)
        except Exception:
            maildrop.close()
            raise
        return maildrop

    async def commit(self, maildrop: Maildrop, indexes: frozenset[int]) -> None:
        await asyncio.to_thread(maildrop.commit, indexes)

    async def close_maildrop(self, maildrop: Maildrop) -> None:
        # Releasing a lock is a close(2): fast enough for the loop, and it
        # must happen even while the task is being cancelled.
        maildrop.close()

    def _account(self, name: str) -> Account:
        # ``name`` is a canonical account name that came from the UserDB.
        return parse_login(name, default_domain=self._default_domain)


def _close_if_opened(future: asyncio.Future[Maildrop]) -> None:
    if not future.cancelled() and future.exception() is None:
        future.result().close()
