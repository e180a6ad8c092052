#!/usr/bin/env python3
"""An asyncio POP3 load generator: standard library only (uvloop if present).

Each subcommand runs one workload against one server and prints one JSON
object on stdout; ``run.py`` starts it pinned to its own CPU.  Usable alone::

    python3 bench/loadgen.py sessions --port 21110 --concurrency 50 --duration 10 \\
        --user-format 's{:04d}@bench.test' --password-format 'pw-s{:04d}' --messages 20

Parsing is minimal on purpose, so the generator is not the bottleneck: one
``asyncio.Protocol`` per connection appends what arrives to a bytearray; a
status line is everything up to CRLF, a multi-line body everything up to
``CRLF . CRLF`` (found with ``bytearray.find`` from where the last search
stopped).  Bodies are never copied or split into lines: the octet count is the
body length minus the stuffed dots (``bytearray.count``).  Every session checks
what it read: STAT's count (and total size) against the seeded maildrop, UIDL's
line count against STAT, each RETR body (dot-stuffing undone) against the
``+OK <n> octets`` the server announced, and the sum against STAT's total.
Any mismatch, ``-ERR``, timeout or dropped connection is an error; the runner
marks a run with errors invalid.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import re
import resource
import ssl
import statistics
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from procinfo import cpu_busy, cpu_sample, tree_cpu_seconds, tree_memory

# ----------------------------------------------------------------------- protocol


class PopError(Exception):
    """The server answered something a correct session never sees."""


_DOT_LINE = re.compile(rb"\r\n\.")  # a line that starts with a dot


class _Body:
    """Counts a multi-line body as it streams past, without keeping it.

    One pass per chunk: the only lines that matter start with a dot, and each
    is either stuffed (``..``) or the terminator (``.`` CRLF); anything else
    is a server that forgot to dot-stuff.  ``tail`` keeps the last 4 octets,
    whose dot lines cannot be classified yet, for the next chunk; it starts
    as the status line's CRLF, so an empty body and a stuffed first line
    need no special case.  Positions are absolute within the body.
    """

    __slots__ = ("count_lines", "lines", "octets", "received", "stuffed", "tail", "unstuffed")

    def __init__(self, *, count_lines: bool) -> None:
        self.count_lines = count_lines  # one more pass over the data: only for listings
        self.tail = b"\r\n"
        self.received = 0  # body octets fed so far (the virtual CRLF excluded)
        self.stuffed = 0
        self.unstuffed = 0  # dot lines that were neither stuffed nor the terminator
        self.lines = 0
        self.octets = 0  # set when complete: body octets with stuffing undone

    def feed(self, chunk: bytes) -> bytes | None:
        """Scan ``chunk``; None if the body goes on, else the octets after it."""
        tail = self.tail
        data = tail + chunk
        size = len(data)
        base = self.received - len(tail)  # absolute position of data[0]
        # Dot lines starting before size - 4 have their next 2 octets here.
        for match in _DOT_LINE.finditer(data, 0, max(0, size - 2)):
            p = match.start()
            after = data[p + 3 : p + 5]
            if after[:1] == b".":
                self.stuffed += 1
            elif after == b"\r\n":
                end = p + 2  # the body keeps its last CRLF
                if self.count_lines:
                    self.lines += chunk.count(b"\n", 0, max(0, end - len(tail)))
                self.octets = base + end - self.stuffed
                return data[p + 5 :]
            else:
                self.unstuffed += 1
        if self.count_lines:
            self.lines += chunk.count(b"\n")
        self.received += len(chunk)
        self.tail = data[-4:]
        return None


class Pop3(asyncio.Protocol):
    """A POP3 client connection: status lines from a small buffer, bodies
    counted as they stream past (never buffered whole)."""

    __slots__ = ("_body", "_closed", "_waiter", "buf", "transport")

    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._body: _Body | None = None
        self._closed = False

    # asyncio callbacks
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, but behave as one.
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        body = self._body
        if body is not None:
            rest = body.feed(data)
            if rest is None:
                return
            self._body = None
            data = rest
        self.buf += data
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def eof_received(self) -> bool:
        self._wake_closed()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._wake_closed()

    def _wake_closed(self) -> None:
        self._closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    # reading
    async def _more(self) -> None:
        if self._closed:
            raise PopError("connection closed by the server")
        self._waiter = asyncio.get_running_loop().create_future()
        try:
            await self._waiter
        finally:
            self._waiter = None

    async def status(self) -> bytes:
        """The next status line without CRLF; PopError unless it is +OK."""
        buf = self.buf
        start = 0
        while True:
            end = buf.find(b"\r\n", start)
            if end >= 0:
                line = bytes(buf[:end])
                del buf[: end + 2]
                if not line.startswith(b"+OK"):
                    raise PopError(line[:120].decode("ascii", "replace"))
                return line
            start = max(0, len(buf) - 1)
            await self._more()

    async def body(self, *, count_lines: bool = False) -> tuple[int, int]:
        """Consume a multi-line body: ``(octets with dot-stuffing undone, lines)``
        (lines only with ``count_lines``, else 0)."""
        body = _Body(count_lines=count_lines)
        rest = body.feed(bytes(self.buf))
        self.buf.clear()
        if rest is None:
            self._body = body
            while self._body is not None:
                await self._more()
        else:
            self.buf += rest
        if body.unstuffed:
            raise PopError(f"{body.unstuffed} lines starting with a dot were not dot-stuffed")
        return body.octets, body.lines

    def send(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def command(self, line: bytes) -> bytes:
        self.send(line)
        return await self.status()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


@dataclass(frozen=True, slots=True)
class Target:
    host: str
    port: int
    tls: ssl.SSLContext | None = None


def client_tls_context() -> ssl.SSLContext:
    """TLS without certificate checks: the servers use a self-signed certificate."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


async def connect(target: Target) -> Pop3:
    loop = asyncio.get_running_loop()
    _transport, protocol = await loop.create_connection(
        Pop3, target.host, target.port, ssl=target.tls
    )
    await protocol.status()  # greeting
    return protocol


async def login(target: Target, user: str, password: str) -> Pop3:
    pop = await connect(target)
    try:
        await pop.command(b"USER " + user.encode() + b"\r\n")
        await pop.command(b"PASS " + password.encode() + b"\r\n")
    except BaseException:
        pop.close()
        raise
    return pop


def parse_stat(line: bytes) -> tuple[int, int]:
    parts = line.split()
    try:
        return int(parts[1]), int(parts[2])
    except (IndexError, ValueError):
        raise PopError(f"bad STAT answer {line[:80]!r}") from None


def announced_octets(line: bytes) -> int | None:
    """``+OK 4242 octets`` -> 4242; None if the server did not say."""
    parts = line.split()
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1])
    return None


@dataclass(slots=True)
class SessionResult:
    messages: int = 0
    octets: int = 0  # message octets retrieved (as on the wire, dot-stuffing undone)


async def full_session(
    target: Target,
    user: str,
    password: str,
    *,
    expect_messages: int | None,
    uidl: bool = True,
    retr: bool = True,
    on_first_retr: Callable[[], None] | None = None,
) -> SessionResult:
    """connect, USER/PASS, STAT, UIDL, RETR each message, QUIT; checked."""
    pop = await login(target, user, password)
    try:
        count, total = parse_stat(await pop.command(b"STAT\r\n"))
        if expect_messages is not None and count != expect_messages:
            raise PopError(f"STAT says {count} messages, expected {expect_messages}")
        if uidl:
            await pop.command(b"UIDL\r\n")
            _octets, lines = await pop.body(count_lines=True)
            if lines != count:
                raise PopError(f"UIDL listed {lines} messages, STAT said {count}")
        result = SessionResult(messages=count)
        if retr:
            if on_first_retr is not None:
                on_first_retr()
            for number in range(1, count + 1):
                line = await pop.command(b"RETR %d\r\n" % number)
                octets, _lines = await pop.body()
                declared = announced_octets(line)
                if declared is not None and declared != octets:
                    raise PopError(f"RETR {number}: announced {declared} octets, got {octets}")
                result.octets += octets
            if result.octets != total:
                raise PopError(f"retrieved {result.octets} octets, STAT said {total}")
        await pop.command(b"QUIT\r\n")
        return result
    finally:
        pop.close()


# ----------------------------------------------------------------------- bookkeeping


@dataclass
class Errors:
    count: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    def add(self, exc: BaseException) -> None:
        self.count += 1
        text = str(exc) or type(exc).__name__
        self.kinds[f"{type(exc).__name__}: {text[:160]}"] += 1

    def as_dict(self) -> dict[str, Any]:
        return {"errors": self.count, "error_kinds": dict(self.kinds.most_common(10))}


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


class Window:
    """CPU use between ``start()`` and ``stop()``: each CPU's busy share, this
    process's, and the server's (its whole process tree)."""

    server_pid: int | None = None  # set from --server-pid

    def __init__(self) -> None:
        self.start()

    def start(self) -> None:
        self._cpu0 = cpu_sample()
        self._self0 = resource.getrusage(resource.RUSAGE_SELF)
        self._server0 = tree_cpu_seconds(self.server_pid) if self.server_pid else 0.0
        self._t0 = time.perf_counter()

    def stop(self) -> dict[str, Any]:
        elapsed = time.perf_counter() - self._t0
        usage = resource.getrusage(resource.RUSAGE_SELF)
        own = (usage.ru_utime + usage.ru_stime) - (self._self0.ru_utime + self._self0.ru_stime)
        result: dict[str, Any] = {
            "cpu_busy_percent": cpu_busy(self._cpu0, cpu_sample()),
            "loadgen_cpu_percent": round(100.0 * own / elapsed, 1) if elapsed > 0 else 0.0,
        }
        if self.server_pid:
            server = tree_cpu_seconds(self.server_pid) - self._server0
            result["server_cpu_percent"] = round(100.0 * server / elapsed, 1) if elapsed else 0.0
        return result


def raise_fd_limit(wanted: int) -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        with contextlib.suppress(ValueError, OSError):  # only root may raise the hard limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, wanted))
            return wanted
        wanted = hard
    if soft == resource.RLIM_INFINITY or soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


# ----------------------------------------------------------------------- workloads


def _credentials(args: argparse.Namespace, index: int) -> tuple[str, str]:
    return args.user_format.format(index), args.password_format.format(index)


async def _timed_loop(
    args: argparse.Namespace,
    one: Callable[[int], Awaitable[int]],
) -> dict[str, Any]:
    """Run ``one(client)`` in a loop on ``--concurrency`` clients; the first
    ``--warmup`` seconds are not counted, then ``--duration`` seconds are."""
    errors = Errors()
    latencies: list[float] = []
    counted_octets = 0
    loop_start = time.perf_counter()
    window_start = loop_start + args.warmup
    window_end = window_start + args.duration
    window = Window()

    async def mark() -> dict[str, Any]:
        await asyncio.sleep(args.warmup)
        window.start()
        await asyncio.sleep(args.duration)
        return window.stop()

    async def client(index: int) -> None:
        nonlocal counted_octets
        while time.perf_counter() < window_end:
            begin = time.perf_counter()
            try:
                async with asyncio.timeout(args.timeout):
                    octets = await one(index)
            except (OSError, PopError, TimeoutError, ssl.SSLError) as exc:
                errors.add(exc)
                await asyncio.sleep(0.05)
                continue
            end = time.perf_counter()
            if window_start <= end <= window_end:
                latencies.append(end - begin)
                counted_octets += octets

    marker = asyncio.ensure_future(mark())
    await asyncio.gather(*(client(i) for i in range(args.concurrency)))
    cpu = await marker
    return {
        "completed": len(latencies),
        "per_second": len(latencies) / args.duration,
        "mb_per_second": counted_octets / args.duration / 1e6,
        "p50_ms": 1000 * percentile(latencies, 0.50),
        "p99_ms": 1000 * percentile(latencies, 0.99),
        "mean_ms": 1000 * statistics.fmean(latencies) if latencies else float("nan"),
        **cpu,
        **errors.as_dict(),
    }


async def workload_sessions(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    async def one(index: int) -> int:
        user, password = _credentials(args, index % args.user_count)
        result = await full_session(target, user, password, expect_messages=args.messages)
        return result.octets

    return await _timed_loop(args, one)


async def workload_login(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    async def one(index: int) -> int:
        user, password = _credentials(args, index % args.user_count)
        pop = await login(target, user, password)
        try:
            await pop.command(b"QUIT\r\n")
        finally:
            pop.close()
        return 0

    return await _timed_loop(args, one)


async def workload_bulk(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    errors = Errors()
    user, password = _credentials(args, 0)
    started: list[float] = []
    window = Window()

    def first_retr() -> None:
        started.append(time.perf_counter())
        window.start()

    elapsed = float("nan")
    octets = 0
    begin = time.perf_counter()
    try:
        async with asyncio.timeout(args.timeout):
            result = await full_session(
                target,
                user,
                password,
                expect_messages=args.messages,
                uidl=False,
                on_first_retr=first_retr,
            )
        elapsed = time.perf_counter() - (started[0] if started else begin)
        octets = result.octets
    except (OSError, PopError, TimeoutError, ssl.SSLError) as exc:
        errors.add(exc)
    cpu = window.stop()
    return {
        "octets": octets,
        "seconds": elapsed,
        "mb_per_second": octets / elapsed / 1e6 if octets and elapsed > 0 else float("nan"),
        "tls": target.tls is not None,
        **cpu,
        **errors.as_dict(),
    }


async def workload_idle(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    """Open N logged-in sessions and measure the server's memory."""
    errors = Errors()
    raise_fd_limit(args.sessions + 1024)
    # One session first, so lazily started processes and caches exist in the
    # baseline too; then measure with no session open.
    user, password = _credentials(args, 0)
    try:
        pop = await login(target, user, password)
        await pop.command(b"QUIT\r\n")
        pop.close()
    except (OSError, PopError, ssl.SSLError) as exc:
        errors.add(exc)
    await asyncio.sleep(args.settle)
    baseline = tree_memory(args.server_pid)

    sessions: list[Pop3] = []
    gate = asyncio.Semaphore(args.parallel_logins)

    async def open_one(index: int) -> None:
        user, password = _credentials(args, index)
        async with gate:
            try:
                async with asyncio.timeout(args.timeout):
                    sessions.append(await login(target, user, password))
            except (OSError, PopError, TimeoutError, ssl.SSLError) as exc:
                errors.add(exc)

    begin = time.perf_counter()
    await asyncio.gather(*(open_one(i) for i in range(args.sessions)))
    open_seconds = time.perf_counter() - begin
    await asyncio.sleep(args.settle)
    loaded = tree_memory(args.server_pid)

    # Every session must still be alive and answering.
    async def check(pop: Pop3) -> None:
        async with gate:
            try:
                async with asyncio.timeout(args.timeout):
                    await pop.command(b"NOOP\r\n")
                    await pop.command(b"QUIT\r\n")
            except (OSError, PopError, TimeoutError, ssl.SSLError) as exc:
                errors.add(exc)
            finally:
                pop.close()

    await asyncio.gather(*(check(pop) for pop in sessions))
    n = args.sessions
    return {
        "sessions": n,
        "opened": len(sessions),
        "open_seconds": open_seconds,
        "logins_per_second": len(sessions) / open_seconds if open_seconds > 0 else 0.0,
        "baseline": baseline.as_dict(),
        "loaded": loaded.as_dict(),
        "rss_kib_per_session": (loaded.rss_kib - baseline.rss_kib) / n,
        "pss_kib_per_session": (loaded.pss_kib - baseline.pss_kib) / n,
        **errors.as_dict(),
    }


def drop_page_cache() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``; False if not permitted."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as file:
            file.write("3\n")
    except OSError:
        return False
    return True


async def workload_open(args: argparse.Namespace, target: Target) -> dict[str, Any]:
    """login + STAT + UIDL on a big maildrop, ``--repeat`` times (first = cold)."""
    errors = Errors()
    user, password = _credentials(args, 0)
    dropped = drop_page_cache() if args.drop_caches else False
    times: list[float] = []
    for _ in range(args.repeat):
        begin = time.perf_counter()
        try:
            async with asyncio.timeout(args.timeout):
                await full_session(
                    target, user, password, expect_messages=args.messages, retr=False
                )
        except (OSError, PopError, TimeoutError, ssl.SSLError) as exc:
            errors.add(exc)
            times.append(float("nan"))
            continue
        times.append(time.perf_counter() - begin)
    return {"seconds": times, "page_cache_dropped": dropped, **errors.as_dict()}


Workload = Callable[[argparse.Namespace, Target], Coroutine[Any, Any, dict[str, Any]]]
WORKLOADS: dict[str, Workload] = {
    "sessions": workload_sessions,
    "login": workload_login,
    "bulk": workload_bulk,
    "idle": workload_idle,
    "open": workload_open,
}


# ----------------------------------------------------------------------- command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--no-uvloop", action="store_true", help="use the stdlib event loop")
    sub = parser.add_subparsers(dest="workload", required=True)

    def common(name: str, help_text: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--host", default="127.0.0.1")
        p.add_argument("--port", type=int, required=True)
        p.add_argument("--tls", action="store_true", help="implicit TLS (POP3S), no cert check")
        p.add_argument("--user-format", required=True, help="str.format with the user index")
        p.add_argument("--password-format", required=True, help="str.format with the user index")
        p.add_argument("--timeout", type=float, default=60.0, help="seconds per session")
        p.add_argument("--server-pid", type=int, default=None, help="for CPU/memory figures")
        return p

    for name, text in (
        ("sessions", "full sessions in a loop"),
        ("login", "USER/PASS/QUIT in a loop"),
    ):
        p = common(name, text)
        p.add_argument("--concurrency", type=int, default=10)
        p.add_argument("--user-count", type=int, default=0, help="default: --concurrency")
        p.add_argument("--duration", type=float, default=10.0)
        p.add_argument("--warmup", type=float, default=1.0)
        p.add_argument("--messages", type=int, default=None, help="expected per maildrop")

    p = common("bulk", "one session retrieving every message")
    p.add_argument("--messages", type=int, default=None)

    p = common("idle", "N idle logged-in sessions; server memory")
    p.add_argument("--sessions", type=int, required=True)
    p.add_argument("--parallel-logins", type=int, default=64)
    p.add_argument("--settle", type=float, default=2.0)

    p = common("open", "login + STAT + UIDL on a big maildrop")
    p.add_argument("--messages", type=int, default=None)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--drop-caches", action="store_true", help="drop the page cache first")

    args = parser.parse_args(argv)
    if args.workload == "idle" and args.server_pid is None:
        parser.error("idle needs --server-pid")
    if getattr(args, "user_count", None) == 0:
        args.user_count = args.concurrency
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    raise_fd_limit(4096)
    Window.server_pid = args.server_pid
    target = Target(args.host, args.port, client_tls_context() if args.tls else None)
    coro = WORKLOADS[args.workload](args, target)
    loop_name = "asyncio"
    if not args.no_uvloop:
        try:
            import uvloop  # noqa: PLC0415 (optional)
        except ImportError:
            pass
        else:
            loop_name = f"uvloop {getattr(uvloop, '__version__', '?')}"
    result: dict[str, Any] = asyncio.run(coro) if loop_name == "asyncio" else uvloop.run(coro)
    result["workload"] = args.workload
    result["loadgen_loop"] = loop_name
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 1 if result.get("errors") else 0


if __name__ == "__main__":
    sys.exit(main())
