"""Listeners behind a load balancer that speaks the PROXY protocol.

With ``server.proxy_networks`` set, each POP3/POP3S listener accepts
connections itself instead of through ``loop.create_server``: a connection
from one of those networks must open with a PROXY protocol header (version 1
or 2), read here before anything else, and its session then takes the client
address the header names: per-address limits, failed-login delays and logs
all see the client, not the balancer.  Connections from anywhere else are
served as they are, so a direct client cannot claim an address.

The header is read with ``MSG_PEEK`` and then exactly its length is taken
off the socket, so not one octet of what follows (a TLS ClientHello on a
POP3S listener) is consumed; the socket is then handed to the event loop
with ``connect_accepted_socket``, TLS and all.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import socket
import ssl
from collections.abc import Callable, Sequence

from mailslot.config import IPNetwork
from mailslot.proxyproto import MAX_HEADER, ProxyHeader, ProxyHeaderError, parse_header

log = logging.getLogger("mailslot.pop3")

# Peeked octets stay in the socket, which therefore stays readable: while a
# header is incomplete, wait this long before looking again.
_INCOMPLETE_WAIT = 0.02


def trusted(address: str, networks: Sequence[IPNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip in network for network in networks)


async def read_header(sock: socket.socket) -> ProxyHeader:
    """The PROXY header at the start of ``sock`` (non-blocking), taken off
    the socket; raises ``ProxyHeaderError`` or ``ConnectionError``."""
    loop = asyncio.get_running_loop()
    while True:
        await _readable(loop, sock)
        try:
            data = sock.recv(MAX_HEADER, socket.MSG_PEEK)
        except BlockingIOError:  # woken without data after all
            continue
        if not data:
            raise ConnectionResetError("closed before the PROXY header")
        header = parse_header(data)
        if header is not None:
            if len(sock.recv(header.length)) != header.length:  # pragma: no cover
                raise ConnectionResetError("PROXY header shorter than peeked")
            return header
        await asyncio.sleep(_INCOMPLETE_WAIT)


async def _readable(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
    ready = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def bind(host: str, port: int, backlog: int) -> list[socket.socket]:
    """Listening sockets for ``host:port``, one per address it resolves to
    (as ``loop.create_server`` binds them)."""
    infos = socket.getaddrinfo(
        host, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP, flags=socket.AI_PASSIVE
    )
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(infos):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


class ProxiedListener:
    """Accepts on ``sockets``; reads the PROXY header of trusted peers, then
    hands each connection to ``factory(client address)``."""

    def __init__(
        self,
        sockets: list[socket.socket],
        factory: Callable[[str], asyncio.Protocol],
        *,
        networks: Sequence[IPNetwork],
        header_timeout: float,
        tls_context: ssl.SSLContext | None,
        handshake_timeout: float,
    ) -> None:
        self.sockets = sockets
        self._factory = factory
        self._networks = tuple(networks)
        self._header_timeout = header_timeout
        self._tls_context = tls_context
        self._handshake_timeout = handshake_timeout
        loop = asyncio.get_running_loop()
        self._accepting = [loop.create_task(self._accept_forever(s)) for s in sockets]
        self._starting: set[asyncio.Task[None]] = set()

    def close(self) -> None:
        """Stop accepting; connections not yet handed over are dropped."""
        for task in (*self._accepting, *self._starting):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def _accept_forever(self, listening: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listening)
            except OSError as exc:  # EMFILE and the like: wait, do not spin
                log.warning("pop3: accept failed: %s", exc)
                await asyncio.sleep(0.1)
                continue
            task = loop.create_task(self._start(sock, str(address[0])))
            self._starting.add(task)
            task.add_done_callback(self._starting.discard)

    async def _start(self, sock: socket.socket, peer: str) -> None:
        loop = asyncio.get_running_loop()
        sock.setblocking(False)
        client = peer
        try:
            if trusted(peer, self._networks):
                try:
                    async with asyncio.timeout(self._header_timeout):
                        header = await read_header(sock)
                except ConnectionError as exc:
                    # A balancer's TCP health check connects and hangs up.
                    log.debug("pop3: %s closed before its PROXY header: %s", peer, exc)
                    sock.close()
                    return
                except TimeoutError:
                    log.warning("pop3: no PROXY header from %s in time", peer)
                    sock.close()
                    return
                client = header.source or peer
                log.debug("pop3: PROXY header from %s: client %s", peer, client)
            await loop.connect_accepted_socket(
                lambda: self._factory(client),
                sock,
                ssl=self._tls_context,
                ssl_handshake_timeout=self._handshake_timeout if self._tls_context else None,
            )
        except ProxyHeaderError as exc:
            log.warning("pop3: bad PROXY header from %s: %s", peer, exc)
            sock.close()
        except (OSError, ssl.SSLError) as exc:
            log.info("pop3: connection from %s not started: %s", client, str(exc) or repr(exc))
            sock.close()
        except BaseException:
            with contextlib.suppress(OSError):
                sock.close()
            raise
