"""Prometheus metrics for operators: ``metrics.listen`` serves ``/metrics``.

What a mail administrator graphs and alerts on: sessions and how they ended,
logins by result, mail retrieved, deleted and delivered, how long maildrops
take to open, and, read at scrape time, the connections and maildrop locks
held right now.  Each server has its own registry (``prometheus_client``'s
default one would mix servers that share a process, as tests do), served by
``prometheus_client``'s HTTP server in a thread of its own: a scrape never
waits for the event loop, nor the loop for a scrape.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Final
from wsgiref.simple_server import WSGIServer

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Histogram,
    ProcessCollector,
    start_http_server,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from mailslot.pop3.session import SessionStatistics

__all__ = ["Metrics", "MetricsServer"]

_OPEN_BUCKETS: Final = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


class _Live(Collector):
    """Gauges read when scraped: nothing to keep in step on the hot path."""

    def __init__(self) -> None:
        self.readers: list[tuple[str, str, Callable[[], float]]] = []

    def collect(self) -> Iterator[GaugeMetricFamily]:
        for name, documentation, read in self.readers:
            yield GaugeMetricFamily(name, documentation, value=read())


class Metrics:
    """The server's counters; the methods are called on the event loop."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        reg = self.registry
        self._live = _Live()
        reg.register(self._live)
        ProcessCollector(registry=reg)  # process_*: memory, CPU, open descriptors
        self.sessions = Counter(
            "mailslot_pop3_sessions", "POP3 sessions ended, by reason", ["reason"], registry=reg
        )
        self.logins = Counter(
            "mailslot_pop3_logins", "POP3 logins, by result (ok, failed)", ["result"], registry=reg
        )
        self.retrieved = Counter(
            "mailslot_pop3_retrieved_messages", "Messages sent by RETR", registry=reg
        )
        self.retrieved_octets = Counter(
            "mailslot_pop3_retrieved_octets", "Octets of messages sent by RETR", registry=reg
        )
        self.deleted = Counter(
            "mailslot_pop3_deleted_messages", "Messages removed at QUIT", registry=reg
        )
        self.open_seconds = Histogram(
            "mailslot_maildrop_open_seconds",
            "Time to lock and list a maildrop at login",
            buckets=_OPEN_BUCKETS,
            registry=reg,
        )
        self.lmtp = Counter(
            "mailslot_lmtp_recipients",
            "LMTP recipients after DATA, by result (delivered, temporary, permanent)",
            ["result"],
            registry=reg,
        )

    def gauge(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        """A gauge whose value ``read()`` gives at each scrape."""
        self._live.readers.append((name, documentation, read))

    def session_ended(self, stats: SessionStatistics, reason: str) -> None:
        self.sessions.labels(reason).inc()
        if stats.retrieved:
            self.retrieved.inc(stats.retrieved)
            self.retrieved_octets.inc(stats.retrieved_octets)
        if stats.deleted:
            self.deleted.inc(stats.deleted)

    def login(self, ok: bool) -> None:
        self.logins.labels("ok" if ok else "failed").inc()

    def delivery(self, code: int) -> None:
        result = "delivered" if code < 300 else "temporary" if code < 500 else "permanent"
        self.lmtp.labels(result).inc()


class MetricsServer:
    """``/metrics`` over HTTP on one address, until ``close()``."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self._server: WSGIServer
        self._thread: threading.Thread
        self._server, self._thread = start_http_server(port, host, registry=metrics.registry)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self._server.server_address[:2]
        return str(host), int(port)

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)
