"""Failed-login penalties, like Dovecot's auth penalty.

Each failed login from a remote address, and each failed login for a login
name, adds to a counter.  The answer to the next failure is delayed by
``2 ** (failures - 1) * base_delay`` seconds, up to ``max_delay``, so a
brute-force client slows down while a user who mistypes once barely notices.
After ``block_after`` failures from one address inside ``window`` seconds,
that address is refused outright until its failures age out.  A successful
login clears the counters of that address and that login name.

Login names are tracked whether or not the account exists, so the penalty
reveals nothing about which accounts exist.  Both tables are LRU-bounded
(``max_entries``): an attacker cycling through addresses or names cannot
grow memory without bound, only evict the oldest entries.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class _Record:
    failures: int
    last: float


class _LruCounter:
    __slots__ = ("_entries", "_max")

    def __init__(self, max_entries: int) -> None:
        self._entries: OrderedDict[str, _Record] = OrderedDict()
        self._max = max_entries

    def get(self, key: str, now: float, window: float) -> int:
        record = self._entries.get(key)
        if record is None:
            return 0
        if now - record.last > window:
            del self._entries[key]
            return 0
        return record.failures

    def add(self, key: str, now: float, window: float) -> int:
        failures = self.get(key, now, window) + 1
        self._entries[key] = _Record(failures, now)
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
        return failures

    def clear(self, key: str) -> None:
        self._entries.pop(key, None)

    def __len__(self) -> int:
        return len(self._entries)


class FailedLoginTracker:
    def __init__(
        self,
        *,
        base_delay: float = 0.5,
        max_delay: float = 15.0,
        block_after: int = 20,
        window: float = 900.0,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._base = base_delay
        self._max_delay = max_delay
        self._block_after = block_after
        self._window = window
        self._clock = clock
        self._addresses = _LruCounter(max_entries)
        self._names = _LruCounter(max_entries)

    def blocked(self, address: str) -> bool:
        """Refuse logins from ``address`` for now."""
        return self._addresses.get(address, self._clock(), self._window) >= self._block_after

    def failed(self, address: str, name: str) -> float:
        """Record a failure; returns the delay to impose before answering."""
        now = self._clock()
        failures = max(
            self._addresses.add(address, now, self._window),
            self._names.add(name.lower(), now, self._window),
        )
        if self._max_delay <= 0:
            return 0.0
        return float(min(self._max_delay, self._base * 2 ** min(failures - 1, 32)))

    def succeeded(self, address: str, name: str) -> None:
        self._addresses.clear(address)
        self._names.clear(name.lower())

    def statistics(self) -> tuple[int, int]:
        """(tracked addresses, tracked names)."""
        return len(self._addresses), len(self._names)
