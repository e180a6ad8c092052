"""The driver's view of users and storage: credential checks in a thread
pool sized for hashing, maildrop open/commit in the default executor,
LOGIN-DELAY, and failed-login penalties.

Every blocking call (argon2, SQLite, directory scans, fsync) runs off the
event loop.  A maildrop opened by a worker thread after its session was
cancelled is closed again, so no lock leaks.

Failures are answered only after the penalty delay, and unknown users cost
the same work as wrong passwords (``UserDB.verify`` checks a dummy hash), so
neither timing nor wording tells which accounts exist.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import itertools
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, Protocol, TypeVar, cast

from mailslot import sasl
from mailslot.auth import Account, InvalidName, UserDB, parse_login
from mailslot.auth.oauth import BearerVerifier
from mailslot.auth.penalty import FailedLoginTracker
from mailslot.logfmt import printable
from mailslot.pop3.apop import apop_matches
from mailslot.server.driver import Flow, LoginTooSoon
from mailslot.server.metrics import Metrics
from mailslot.store import Maildrop, MaildropStore

log = logging.getLogger("mailslot.auth")
T = TypeVar("T")


class GssContext(Protocol):
    """One GSSAPI exchange's security context (``auth.gssapi.GssAcceptor``)."""

    def accept(self, token: bytes) -> sasl.GssResult | None: ...

    def wrap(self, data: bytes) -> bytes: ...

    def unwrap(self, data: bytes) -> bytes | None: ...

    def login(self, principal: str, authzid: str) -> str | None: ...


# A secret no user has: APOP/CRAM-MD5 attempts for unknown users compute a
# digest against it, so they cost the same as a wrong secret.
_DUMMY_SECRET = os.urandom(16).hex()


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
        penalties: FailedLoginTracker,
        login_delay: int = 0,
        cache: CredentialCache | None = None,
        clock: Callable[[], float] = time.time,
        metrics: Metrics | None = None,
        gss_context: Callable[[], GssContext] | None = None,
        bearer: BearerVerifier | None = None,
    ) -> None:
        self._users = users
        self._gss_context = gss_context
        self._bearer = bearer
        self._store = store
        self._auth_executor = auth_executor
        self._hostname = hostname
        self._default_domain = default_domain
        self._penalties = penalties
        self._login_delay = login_delay
        self._cache = cache
        self._clock = clock
        self._metrics = metrics
        self._counter = itertools.count()
        self._closing: set[asyncio.Future[None]] = set()
        # Maildrop opens still running for sessions that are gone.
        self._abandoned: set[asyncio.Future[Maildrop]] = set()

    def new_timestamp(self) -> str:
        # RFC 1939 §7: msg-id syntax, different for every greeting.
        return f"<{os.getpid()}.{time.time_ns()}.{next(self._counter)}@{self._hostname}>"

    # ------------------------------------------------------------ credentials

    async def _in_auth_pool(self, function: Callable[..., T], *args: object) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._auth_executor, function, *args)

    async def authenticate(self, username: str, password: str, remote: str) -> str | None:
        if self._penalties.blocked(remote):
            await self._fail(remote, username, "blocked")
            return None
        account = await self._verify(username, password)
        return await self._settle(account, remote, username)

    async def _verify(self, username: str, password: str) -> Account | None:
        cache = self._cache
        if cache is not None:
            hit = cache.get(username, password)
            if hit is not None:
                return hit
        account = await self._in_auth_pool(self._users.verify, username, password)
        if cache is not None and account is not None:
            cache.put(username, password, account)
        return account

    async def apop(self, username: str, digest: str, timestamp: str, remote: str) -> str | None:
        if self._penalties.blocked(remote):
            await self._fail(remote, username, "blocked")
            return None
        account = await self._in_auth_pool(self._check_apop, username, digest, timestamp)
        return await self._settle(account, remote, username)

    def _check_apop(self, username: str, digest: str, timestamp: str) -> Account | None:
        secret = self._users.secret(username)
        matches = apop_matches(timestamp, secret or _DUMMY_SECRET, digest)
        if secret is None or not matches:
            return None
        return parse_login(username, default_domain=self._default_domain)

    def sasl_start(self, mechanism: str, initial_response: bytes | None) -> Flow:
        context = None
        if self._gss_context is not None and mechanism.upper() == "GSSAPI":
            context = self._gss_context()
        return sasl.start(mechanism, initial_response, hostname=self._hostname, gss_context=context)

    async def sasl_fulfil(self, step: sasl.Step) -> object:
        match step:
            case sasl.VerifyPassword(authcid=authcid, password=password):
                return await self._verify(authcid, password) is not None
            case sasl.LookupSecret(authcid=authcid):
                return await self._in_auth_pool(self._users.secret, authcid)
            case sasl.LookupScram(authcid=authcid, hash_name=hash_name):
                return await self._in_auth_pool(self._users.scram, authcid, hash_name)
            case sasl.GssAccept(context=context, token=token):
                # Decrypting a ticket with the keytab's key: the auth pool.
                return await self._in_auth_pool(cast(GssContext, context).accept, token)
            case sasl.GssWrap(context=context, data=data):
                return cast(GssContext, context).wrap(data)
            case sasl.GssUnwrap(context=context, data=data):
                return cast(GssContext, context).unwrap(data)
            case sasl.VerifyBearer(token=token, user=user):
                return await self._in_auth_pool(self._bearer_login, token, user)
            case sasl.MapPrincipal(context=context, principal=principal, authzid=authzid):
                login = cast(GssContext, context).login(principal, authzid)
                return await self._in_auth_pool(self._existing, login)
        raise AssertionError(f"unexpected SASL step {step!r}")

    def _bearer_login(self, token: str, user: str) -> str | None:
        """The account a bearer token is good for; the user name the client
        sent with it, if any, must name that same account."""
        login = self._bearer.login(token) if self._bearer is not None else None
        if login is None:
            return None
        if user:
            try:
                same = (
                    parse_login(user, default_domain=self._default_domain).name
                    == parse_login(login, default_domain=self._default_domain).name
                )
            except InvalidName:
                return None
            if not same:
                return None
        return self._existing(login)

    def _existing(self, login: str | None) -> str | None:
        """``login`` if it names an account in the user database."""
        try:
            return login if login and self._users.get(login) is not None else None
        except InvalidName:
            return None

    async def sasl_outcome(self, outcome: sasl.Outcome, remote: str) -> str | None:
        if isinstance(outcome, sasl.Success):
            try:
                account = parse_login(outcome.authcid, default_domain=self._default_domain)
            except InvalidName:
                account = None
            if self._penalties.blocked(remote):
                await self._fail(remote, outcome.authcid, "blocked")
                return None
            return await self._settle(account, remote, outcome.authcid)
        await self._fail(remote, "", outcome.reason)
        return None

    async def _settle(self, account: Account | None, remote: str, login: str) -> str | None:
        if account is None:
            await self._fail(remote, login, "bad credentials")
            return None
        self._penalties.succeeded(remote, login)
        if self._metrics is not None:
            self._metrics.login(ok=True)
        return account.name

    async def _fail(self, remote: str, login: str, why: str) -> None:
        if self._metrics is not None:
            self._metrics.login(ok=False)
        delay = self._penalties.failed(remote, login)
        # One line a failure, for fail2ban: see README "Security".
        log.warning(
            "auth failed: remote=%s user=%s reason=%s", remote, printable(login or None), why
        )
        if delay:
            await asyncio.sleep(delay)

    # ------------------------------------------------------------ maildrops

    async def open_maildrop(self, account: str) -> Maildrop:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, self._open, account)
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            self._abandoned.add(future)
            future.add_done_callback(self._close_if_opened)  # first: drain() sees the close
            future.add_done_callback(self._abandoned.discard)
            raise

    def _close_if_opened(self, future: asyncio.Future[Maildrop]) -> None:
        """A maildrop opened for a session that is gone: close it (off the
        loop if it still has its first uid list to write)."""
        if not future.cancelled() and future.exception() is None:
            self.close_maildrop(future.result())

    def _open(self, name: str) -> Maildrop:
        account = parse_login(name, default_domain=self._default_domain)
        now = self._clock()
        if self._login_delay:
            record = self._users.get(name)
            last = record.last_login if record else None
            if last is not None and now - last < self._login_delay:
                raise LoginTooSoon
        started = time.perf_counter()
        maildrop = self._store.open(account.user, account.domain)
        if self._metrics is not None:
            self._metrics.open_seconds.observe(time.perf_counter() - started)
        if self._login_delay:
            try:
                self._users.record_login(account, now)
            except Exception:
                maildrop.close()
                raise
        return maildrop

    async def commit(
        self, maildrop: Maildrop, indexes: frozenset[int], retrieved: frozenset[int]
    ) -> None:
        await asyncio.to_thread(maildrop.commit, indexes, retrieved)

    def close_maildrop(self, maildrop: Maildrop) -> None:
        # Releasing a lock is fast enough for the loop, and it must happen
        # even while the connection is being torn down.  Writing a snapshot
        # that was never saved (a client gone without QUIT) is not.
        if maildrop.unsaved:
            closing = asyncio.get_running_loop().run_in_executor(None, maildrop.close)
            self._closing.add(closing)
            closing.add_done_callback(self._closing.discard)
        else:
            maildrop.close()

    async def drain(self) -> None:
        """Wait for the maildrops still being closed (at shutdown)."""
        await asyncio.sleep(0)  # connections torn down just now release theirs
        while self._closing or self._abandoned:
            pending: list[asyncio.Future[Any]] = [*self._closing, *self._abandoned]
            await asyncio.wait(pending)


class CredentialCache:
    """Verified logins for a short time, like Dovecot's auth cache.

    The key is HMAC-SHA-256 over login and password with a key that lives only
    in this process: neither the password nor anything that could be tested
    offline against it is kept.  Only successes are cached, so a wrong
    password always costs a full check (and its penalty).  A password changed
    meanwhile keeps working for at most ``ttl`` seconds; the cache is bounded
    (oldest entries go first).
    """

    def __init__(
        self, *, ttl: float, max_entries: int = 10_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._ttl = ttl
        self._max = max_entries
        self._clock = clock
        self._key = os.urandom(32)
        self._entries: OrderedDict[bytes, tuple[Account, float]] = OrderedDict()

    def _digest(self, login: str, password: str) -> bytes:
        data = (
            login.encode("utf-8", "surrogatepass")
            + b"\0"
            + password.encode("utf-8", "surrogatepass")
        )
        return hmac.new(self._key, data, hashlib.sha256).digest()

    def get(self, login: str, password: str) -> Account | None:
        key = self._digest(login, password)
        entry = self._entries.get(key)
        if entry is None:
            return None
        account, expires = entry
        if self._clock() >= expires:
            del self._entries[key]
            return None
        return account

    def put(self, login: str, password: str, account: Account) -> None:
        key = self._digest(login, password)
        self._entries[key] = (account, self._clock() + self._ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)

    def __len__(self) -> int:
        return len(self._entries)
