"""The verified-login cache: keyed by a keyed hash, TTL, bounded."""

from __future__ import annotations

from mailslot.auth import Account
from mailslot.server.backend import CredentialCache

ALICE = Account(user="alice", domain="example.org")


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_hit_miss_and_expiry() -> None:
    clock = Clock()
    cache = CredentialCache(ttl=60, clock=clock)
    assert cache.get("alice", "pw") is None
    cache.put("alice", "pw", ALICE)
    assert cache.get("alice", "pw") == ALICE
    assert cache.get("alice", "PW") is None  # another password is not a hit
    assert cache.get("alice ", "pw") is None
    clock.now = 61
    assert cache.get("alice", "pw") is None
    assert len(cache) == 0


def test_keeps_no_password_and_is_bounded() -> None:
    cache = CredentialCache(ttl=60, max_entries=3)
    for n in range(10):
        cache.put(f"user{n}", f"secret-{n}", ALICE)
    assert len(cache) == 3
    assert cache.get("user0", "secret-0") is None and cache.get("user9", "secret-9") == ALICE
    stored = repr(cache._entries)
    assert "secret" not in stored and "user9" not in stored


def test_keys_differ_between_processes_caches() -> None:
    a, b = CredentialCache(ttl=60), CredentialCache(ttl=60)
    assert a._digest("alice", "pw") != b._digest("alice", "pw")
