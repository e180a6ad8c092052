"""The Prometheus endpoint (metrics.listen) of a real server, scraped over HTTP."""

from __future__ import annotations

import poplib
import smtplib
import time
import urllib.request
from pathlib import Path

import pytest

from tests.helpers.server import add_user, make_settings, running

PASSWORD = "correct horse"


def scrape(address: tuple[str, int]) -> dict[str, float]:
    """Every sample line as {'name{labels}': value}."""
    with urllib.request.urlopen(f"http://{address[0]}:{address[1]}/metrics", timeout=10) as reply:
        assert reply.status == 200
        text = reply.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def scrape_until(address: tuple[str, int], key: str, value: float) -> dict[str, float]:
    """Scrape until ``key`` has ``value``: the server counts a connection's
    end when it is torn down, a moment after the client let go."""
    deadline = time.monotonic() + 10
    samples = scrape(address)
    while samples.get(key) != value:
        assert time.monotonic() < deadline, (key, samples)
        time.sleep(0.02)
        samples = scrape(address)
    return samples


def test_metrics_count_what_happened(tmp_path: Path) -> None:
    settings = make_settings(
        tmp_path / "data", metrics__listen=["127.0.0.1:0"], lmtp__listen=["127.0.0.1:0"]
    )
    add_user(settings, "alice", PASSWORD)
    with running(settings) as server:
        metrics = server.addresses["metrics"]
        before = scrape(metrics)
        assert before["mailslot_pop3_connections"] == 0, before
        assert before.get('mailslot_pop3_logins_total{result="ok"}', 0) == 0, before

        with smtplib.LMTP(*server.addresses["lmtp"]) as lmtp:
            lmtp.sendmail("a@b.test", ["alice", "nobody"], b"Subject: one\r\n\r\nbody\r\n")
        wrong = poplib.POP3(*server.address, timeout=30)
        wrong.user("alice")
        with pytest.raises(poplib.error_proto):
            wrong.pass_("not it")
        wrong.quit()

        client = poplib.POP3(*server.address, timeout=30)
        client.user("alice")
        client.pass_(PASSWORD)
        client.retr(1)
        client.dele(1)
        during = scrape_until(metrics, "mailslot_pop3_connections", 1)
        assert during["mailslot_maildrops_locked"] == 1, during
        client.quit()

        after = scrape_until(metrics, 'mailslot_pop3_sessions_total{reason="quit"}', 2)
    expected = {
        'mailslot_pop3_logins_total{result="ok"}': 1,
        'mailslot_pop3_logins_total{result="failed"}': 1,
        "mailslot_pop3_retrieved_messages_total": 1,
        "mailslot_pop3_deleted_messages_total": 1,
        'mailslot_pop3_sessions_total{reason="quit"}': 2,
        "mailslot_maildrop_open_seconds_count": 1,
        'mailslot_lmtp_recipients_total{result="delivered"}': 1,  # "nobody": refused at RCPT
        "mailslot_pop3_connections": 0,
        "mailslot_maildrops_locked": 0,
    }
    # All at once, so that a failure shows every figure.
    assert {key: after.get(key) for key in expected} == expected
    assert after["mailslot_pop3_retrieved_octets_total"] > 0
    assert after["process_resident_memory_bytes"] > 0 and after["process_open_fds"] > 0


def test_no_metrics_listener_by_default(tmp_path: Path) -> None:
    with running(make_settings(tmp_path / "data")) as server:
        assert "metrics" not in server.addresses
