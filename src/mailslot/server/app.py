"""The server process: builds the parts from ``Settings``, runs the
listeners, enforces connection limits and autologout, and shuts down in
order.

Shutdown (SIGTERM/SIGINT): stop accepting → let open sessions end by
themselves for ``shutdown_grace`` seconds → close the rest.  A session that
did not QUIT never reaches UPDATE, so it deletes nothing; its lock is
released.  SIGHUP reloads the TLS certificate and key for new connections.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import grp
import logging
import os
import pwd
import resource
import signal
import ssl
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace

from mailslot.auth import HashParams, PasswordHasher, UserDB
from mailslot.auth.oauth import BearerVerifier, OAuthConfigError
from mailslot.auth.penalty import FailedLoginTracker
from mailslot.config import OAUTH_MECHANISMS, Address, ConfigError, Settings
from mailslot.delivery.lmtp import LmtpSessionOptions
from mailslot.pop3.session import SessionOptions, SessionStatistics
from mailslot.server import tls
from mailslot.server.backend import CredentialCache, GssContext, StoreBackend
from mailslot.server.driver import DriverOptions, Pop3Connection
from mailslot.server.lmtp import LmtpListener, LmtpOptions, UserDBResolver
from mailslot.server.metrics import Metrics, MetricsServer
from mailslot.server.proxied import ProxiedListener, bind
from mailslot.store.maildir import MaildirStore

log = logging.getLogger("mailslot.server")

TOO_MANY_CONNECTIONS = b"-ERR [SYS/TEMP] Too many connections, try again later\r\n"
TOO_MANY_FROM_ADDRESS = b"-ERR [SYS/TEMP] Too many connections from your address\r\n"
SHUTTING_DOWN = b"-ERR [SYS/TEMP] Server shutting down, try again later\r\n"
_BACKLOG = 1024


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
    return UserDB(
        settings.user_db_path,
        hasher=hasher,
        default_domain=settings.default_domain,
        rehash=settings.rehash,
    )


def open_store(settings: Settings) -> MaildirStore:
    return MaildirStore(
        settings.mail_template, hostname=settings.greeting_hostname, lock_file=settings.lock_path
    )


def prepare_lock_file(store: MaildirStore) -> None:
    """Create and open the maildrop lock file now: ``ConfigError`` if it cannot be."""
    try:
        store.locks.prepare()
    except OSError as exc:
        raise ConfigError(
            "storage.lock_file", f"cannot open {store.locks.path}: {exc.strerror}"
        ) from None


def gss_contexts(settings: Settings) -> Callable[[], GssContext] | None:
    """A factory of GSSAPI acceptor contexts when ``auth.mechanisms`` lists
    GSSAPI; ``ConfigError`` if the package or the keytab is missing."""
    keytab = settings.gssapi_keytab_path
    if "GSSAPI" not in settings.mechanisms or keytab is None:
        return None
    try:
        from mailslot.auth import gssapi  # noqa: PLC0415 (an optional dependency)
    except ImportError as exc:
        raise ConfigError("auth.mechanisms", str(exc)) from None
    try:
        credentials = gssapi.acceptor_credentials(keytab)
    except gssapi.GssError as exc:
        raise ConfigError("auth.gssapi_keytab", str(exc)) from None
    return lambda: gssapi.GssAcceptor(credentials)


def bearer_verifier(settings: Settings) -> BearerVerifier | None:
    """The OAuth token checker when ``auth.mechanisms`` lists OAUTHBEARER or
    XOAUTH2; ``ConfigError`` if its key file is unusable."""
    if settings.oauth_key is None or not any(m in settings.mechanisms for m in OAUTH_MECHANISMS):
        return None
    try:
        return BearerVerifier(
            str(settings.data_path(settings.oauth_key)),
            issuer=settings.oauth_issuer,
            audience=settings.oauth_audience,
            claim=settings.oauth_username_claim,
        )
    except OAuthConfigError as exc:
        raise ConfigError("auth.oauth_key", str(exc)) from None


def tls_files(settings: Settings) -> tls.TlsFiles | None:
    if settings.tls_cert is None or settings.tls_key is None:
        return None
    return tls.TlsFiles(
        cert=settings.data_path(settings.tls_cert), key=settings.data_path(settings.tls_key)
    )


class ConnectionRegistry:
    """Open connections: global and per-address caps, idle sweeps."""

    def __init__(
        self,
        *,
        max_connections: int,
        max_per_address: int,
        autologout: float,
        metrics: Metrics | None = None,
    ) -> None:
        self._connections: set[Pop3Connection] = set()
        self._metrics = metrics
        self._per_address: Counter[str] = Counter()
        self._max = max_connections
        self._max_per_address = max_per_address
        self._autologout = autologout
        self._loop = asyncio.get_running_loop()
        self.accepting = True
        self.empty = asyncio.Event()
        self.empty.set()

    def __len__(self) -> int:
        return len(self._connections)

    def now(self) -> float:
        return self._loop.time()

    def admit(self, connection: Pop3Connection) -> bytes | None:
        if not self.accepting:
            return SHUTTING_DOWN
        if len(self._connections) >= self._max:
            return TOO_MANY_CONNECTIONS
        if self._per_address[connection.remote] >= self._max_per_address:
            return TOO_MANY_FROM_ADDRESS
        self._connections.add(connection)
        self._per_address[connection.remote] += 1
        self.empty.clear()
        return None

    def release(self, connection: Pop3Connection) -> None:
        if connection in self._connections:
            self._connections.discard(connection)
            self._per_address[connection.remote] -= 1
            if self._per_address[connection.remote] <= 0:
                del self._per_address[connection.remote]
        if not self._connections:
            self.empty.set()

    def ended(self, stats: SessionStatistics, reason: str) -> None:
        if self._metrics is not None:
            self._metrics.session_ended(stats, reason)

    async def sweep_forever(self) -> None:
        """Autologout: one pass over all connections every few seconds,
        instead of a timer per connection."""
        interval = max(0.05, min(5.0, self._autologout / 4))
        while True:
            await asyncio.sleep(interval)
            deadline = self.now() - self._autologout
            for connection in [c for c in self._connections if c.last_active < deadline]:
                if not connection.waiting_on_server:
                    connection.timed_out()

    def shutdown_all(self) -> None:
        for connection in list(self._connections):
            connection.shutdown()


class MailslotServer:
    """All listeners of one ``mailslot serve`` process."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._users = open_user_db(settings)
        self._auth_executor = ThreadPoolExecutor(
            max_workers=settings.auth_workers, thread_name_prefix="auth"
        )
        self._tls_files = tls_files(settings)
        self.tls_context: ssl.SSLContext | None = None
        if self._tls_files is not None:
            self.tls_context = tls.server_context(
                self._tls_files, min_version=settings.tls_min_version
            )
        store = open_store(settings)
        self._store = store
        self.metrics = Metrics()
        resolver = UserDBResolver(self._users, default_domain=settings.default_domain)
        self._lmtp = LmtpListener(
            resolver=resolver,
            store=store,
            quota=resolver.quota,
            metrics=self.metrics,
            options=LmtpOptions(
                session=LmtpSessionOptions(
                    hostname=settings.greeting_hostname,
                    max_message_size=settings.lmtp_max_message_size,
                    max_recipients=settings.lmtp_max_recipients,
                ),
                max_connections=settings.lmtp_max_connections,
                socket_mode=settings.lmtp_socket_mode,
            ),
        )
        self._backend = StoreBackend(
            users=self._users,
            store=store,
            auth_executor=self._auth_executor,
            hostname=settings.greeting_hostname,
            default_domain=settings.default_domain,
            penalties=FailedLoginTracker(
                max_delay=settings.penalty_max_delay,
                block_after=settings.penalty_block_after,
                window=settings.penalty_window,
            ),
            login_delay=settings.login_delay,
            cache=CredentialCache(ttl=settings.cache_ttl) if settings.cache_ttl else None,
            metrics=self.metrics,
            gss_context=gss_contexts(settings),
            bearer=bearer_verifier(settings),
        )
        self._session_options = SessionOptions(
            expire=settings.expire,
            login_delay=settings.login_delay,
            implementation=settings.implementation,
            max_bad_commands=settings.max_bad_commands,
            max_auth_failures=settings.max_auth_failures,
            stls=self.tls_context is not None,
            plaintext_without_tls=settings.plaintext_without_tls,
            apop=settings.apop,
            sasl_mechanisms=settings.mechanisms,
        )
        self._servers: list[asyncio.Server | ProxiedListener] = []
        self._registry: ConnectionRegistry | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._stopping: asyncio.Event | None = None
        self._metrics_servers: list[MetricsServer] = []
        self.listeners: list[Listener] = []
        self.metrics.gauge(
            "mailslot_pop3_connections",
            "POP3 connections open now",
            lambda: self.active_connections,
        )
        self.metrics.gauge(
            "mailslot_maildrops_locked",
            "Maildrops this process holds locked now",
            lambda: len(store.locks),
        )
        self.metrics.gauge(
            "mailslot_lmtp_connections",
            "LMTP connections open now",
            lambda: self._lmtp.active_connections,
        )

    @property
    def active_connections(self) -> int:
        return len(self._registry) if self._registry is not None else 0

    def _driver_options(self, *, implicit_tls: bool) -> DriverOptions:
        options = self._session_options
        if implicit_tls:
            options = replace(options, tls=True, stls=False)
        trusted = None
        if self._settings.plaintext_on_loopback:
            trusted = replace(options, plaintext_without_tls=True)
        return DriverOptions(
            session=options,
            loopback_session=trusted,
            tls_context=self.tls_context,
            handshake_timeout=self._settings.tls_handshake_timeout,
        )

    def _ensure_file_limit(self) -> None:
        """Each session holds its socket, and a message file while it sends
        one (maildrop locks cost none): raise the soft limit towards what
        the caps need when every session is sending."""
        settings = self._settings
        need = 2 * settings.max_connections + settings.lmtp_max_connections + 64
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft < need:
            target = need if hard == resource.RLIM_INFINITY else min(need, hard)
            with contextlib.suppress(ValueError, OSError):
                resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        if soft < need:
            log.warning(
                "open-file limit %d is below the %d that server.max_connections = %d needs "
                "(2 per sending session); raise it (systemd: LimitNOFILE=)",
                soft,
                need,
                settings.max_connections,
            )

    async def start(self) -> list[Listener]:
        """Bind every listener; returns them with their actual ports."""
        self._ensure_file_limit()
        self._stopping = asyncio.Event()
        registry = ConnectionRegistry(
            max_connections=self._settings.max_connections,
            max_per_address=self._settings.max_connections_per_ip,
            autologout=self._settings.autologout,
            metrics=self.metrics,
        )
        self._registry = registry
        loop = asyncio.get_running_loop()
        plans = [("pop3", a, False) for a in self._settings.pop3_listen]
        plans += [("pop3s", a, True) for a in self._settings.pop3s_listen]
        for protocol, address, implicit in plans:
            options = self._driver_options(implicit_tls=implicit)

            def factory(remote: str = "", options: DriverOptions = options) -> Pop3Connection:
                return Pop3Connection(
                    backend=self._backend, options=options, registry=registry, remote=remote
                )

            tls_context = self.tls_context if implicit else None
            handshake = self._settings.tls_handshake_timeout
            server: asyncio.Server | ProxiedListener
            if self._settings.proxy_networks:
                server = ProxiedListener(
                    bind(address.host, address.port, _BACKLOG),
                    factory,
                    networks=self._settings.proxy_networks,
                    header_timeout=self._settings.proxy_timeout,
                    tls_context=tls_context,
                    handshake_timeout=handshake,
                )
            else:
                server = await loop.create_server(
                    factory,
                    address.host,
                    address.port,
                    reuse_address=True,
                    backlog=_BACKLOG,
                    ssl=tls_context,
                    ssl_handshake_timeout=handshake if implicit else None,
                )
            self._servers.append(server)
            for sock in server.sockets:
                host, port = sock.getsockname()[:2]
                listener = Listener(protocol, Address(host, port))
                self.listeners.append(listener)
                log.info("listening: %s on %s", protocol, listener.address)
        for address in self._settings.lmtp_listen:
            for host, port in await self._lmtp.listen_tcp(address.host, address.port):
                listener = Listener("lmtp", Address(host, port))
                self.listeners.append(listener)
                log.info("listening: lmtp on %s", listener.address)
        if self._settings.lmtp_socket is not None:
            path = await self._lmtp.listen_unix(
                str(self._settings.data_path(self._settings.lmtp_socket))
            )
            _hand_over_socket(path, self._settings)
            self.listeners.append(Listener("lmtp", Address(str(path), 0)))
        for address in self._settings.metrics_listen:
            metrics_server = MetricsServer(self.metrics, address.host, address.port)
            self._metrics_servers.append(metrics_server)
            host, port = metrics_server.address
            self.listeners.append(Listener("metrics", Address(host, port)))
            log.info("listening: metrics on %s:%d", host, port)
        self._sweeper = loop.create_task(registry.sweep_forever())
        # Everything built so far lives as long as the process: keep it out of
        # the cyclic collector's way (it would walk it on every full collection).
        gc.collect()
        gc.freeze()
        return self.listeners

    def prepare_storage(self) -> None:
        """Open the maildrop lock file (as the user that will serve)."""
        prepare_lock_file(self._store)

    async def serve_until_stopped(self) -> None:
        """Run until ``stop()`` (or SIGTERM/SIGINT when installed)."""
        assert self._stopping is not None
        await self._stopping.wait()
        await self._shutdown()

    def install_signal_handlers(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload_tls)

    def reload_tls(self) -> None:
        if self.tls_context is None or self._tls_files is None:
            log.info("SIGHUP: no TLS configured, nothing to reload")
            return
        try:
            tls.reload(self.tls_context, self._tls_files)
        except tls.TlsConfigError as exc:
            log.error("SIGHUP: keeping the old certificate: %s", exc)
        else:
            log.info("SIGHUP: reloaded %s", self._tls_files.cert)

    def stop(self) -> None:
        if self._stopping is not None and not self._stopping.is_set():
            log.info("stopping: no new connections; %d open", self.active_connections)
            self._stopping.set()

    async def _shutdown(self) -> None:
        registry = self._registry
        assert registry is not None
        registry.accepting = False
        for server in self._servers:
            server.close()
        lmtp = asyncio.create_task(self._lmtp.shutdown(grace=self._settings.shutdown_grace))
        try:
            await asyncio.wait_for(registry.empty.wait(), self._settings.shutdown_grace)
        except TimeoutError:
            log.info("stopping: closing %d sessions (nothing is deleted)", len(registry))
            registry.shutdown_all()
            await asyncio.sleep(0)
        await lmtp
        await self._backend.drain()
        for metrics_server in self._metrics_servers:
            metrics_server.close()
        if self._sweeper is not None:
            self._sweeper.cancel()
        self._auth_executor.shutdown(wait=False, cancel_futures=True)
        self._users.close()
        log.info("stopped")


def _hand_over_socket(path: str, settings: Settings) -> None:
    """Give the LMTP socket to ``server.user`` and ``lmtp.socket_group``: it is
    created before privileges are dropped, and the MTA's group must reach it."""
    uid = gid = -1
    try:
        if settings.run_user is not None and os.geteuid() == 0:
            uid = pwd.getpwnam(settings.run_user).pw_uid
    except KeyError:
        raise ConfigError("server.user", "no such user") from None
    try:
        if settings.lmtp_socket_group is not None:
            gid = grp.getgrnam(settings.lmtp_socket_group).gr_gid
    except KeyError:
        raise ConfigError("lmtp.socket_group", "no such group") from None
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)
