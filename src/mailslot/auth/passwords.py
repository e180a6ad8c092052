"""Password hashing: Dovecot-style ``{SCHEME}`` values, argon2id by default.

Theory of operation
-------------------
A stored password is a *scheme prefix* followed by that scheme's encoding,
as Dovecot stores them (``doveadm pw``), so hashes migrated from an existing
Dovecot user database keep working::

    {ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$<salt>$<hash>
    {PLAIN}secret

``PasswordHasher.hash`` always writes ``{ARGON2ID}`` with the configured
``HashParams``.  ``PasswordHasher.verify`` reads the prefix and dispatches
through ``_VERIFIERS``, a registry from scheme name to a function
``(encoded, password_octets) -> bool``; adding ``{BLF-CRYPT}``,
``{SHA512-CRYPT}``, ``{SSHA512}``... is adding one entry there.  Schemes
accepted now:

- ``{ARGON2ID}`` and ``{ARGON2I}``: checked by argon2-cffi, which reads the
  cost parameters from the encoded hash itself.
- ``{PLAIN}``: the password in clear, compared with ``hmac.compare_digest``.
  It exists for benchmarks (logins that cost nothing) and for migrating from
  cleartext databases; never use it for real accounts.  A successful login
  against any scheme other than the current one reports ``needs_rehash`` so
  the user database upgrades it to argon2id.

``verify`` never raises for a wrong password or a malformed, truncated or
unknown-scheme stored value: all of them are simply "no".  A value without a
``{SCHEME}`` prefix is malformed (Dovecot would assume a default scheme; we
refuse to guess).

Passwords are arbitrary strings: spaces, TAB and CR inside them are data
(RFC 1939 §7: PASS "may treat spaces as part of the password").  They are
hashed as UTF-8; lone surrogates from ``surrogateescape`` decoding turn back
into the original octets, so a client that sends non-UTF-8 octets still logs
in with the same octets every time.

Timing: argon2 is slow on purpose, and a server that skipped it for unknown
users would tell an attacker which users exist (RFC 1939 §13).
``verify_dummy`` does the same work as a real ``verify`` against a dummy hash
made once with the same parameters.  ``parallelism`` defaults to 1: the
server runs verifies in a thread pool, one thread each.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import argon2
from argon2.exceptions import Argon2Error, InvalidHashError

__all__ = ["SCHEMES", "HashParams", "PasswordHasher"]

_SCHEME_ARGON2ID = "ARGON2ID"
_SCHEME_ARGON2I = "ARGON2I"
_SCHEME_PLAIN = "PLAIN"

#: Longest scheme name we look up; anything longer is malformed.
_MAX_SCHEME_LEN = 32

#: A verifier gets the stored value without its ``{SCHEME}`` prefix and the
#: password as octets; it returns whether they match and must not raise for
#: a malformed stored value.
Verifier = Callable[[str, bytes], bool]

# argon2-cffi reads type, version and costs from the encoded hash, so one
# instance verifies hashes made with any parameters.
_ARGON2_CHECKER = argon2.PasswordHasher()


@dataclass(frozen=True, slots=True, kw_only=True)
class HashParams:
    """argon2id cost parameters (RFC 9106 §4).

    The defaults are RFC 9106's second recommended option (64 MiB, t=3)
    with one lane, because each verify runs in its own pool thread.
    """

    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 1

    def __post_init__(self) -> None:
        if self.time_cost < 1:
            raise ValueError("time_cost must be at least 1")
        if self.parallelism < 1:
            raise ValueError("parallelism must be at least 1")
        # RFC 9106 §3.1: memory is at least 8 KiB per lane.
        if self.memory_kib < 8 * self.parallelism:
            raise ValueError("memory_kib must be at least 8 * parallelism")


class PasswordHasher:
    """Hash passwords for storage and check them at login.  Thread-safe."""

    __slots__ = ("_argon2", "_dummy", "_params")

    def __init__(self, params: HashParams = HashParams()) -> None:
        self._params = params
        self._argon2 = argon2.PasswordHasher(
            time_cost=params.time_cost,
            memory_cost=params.memory_kib,
            parallelism=params.parallelism,
            type=argon2.Type.ID,
        )
        # Made on first use: a CLI run that only adds a user should not pay
        # for a second hash.
        self._dummy: str | None = None

    @property
    def params(self) -> HashParams:
        return self._params

    def hash(self, password: str) -> str:
        """Return ``{ARGON2ID}$argon2id$...`` for *password* with a fresh salt.

        Raises ``ValueError`` if *password* cannot be encoded (a lone
        surrogate that ``surrogateescape`` did not produce).
        """
        return f"{{{_SCHEME_ARGON2ID}}}{self._argon2.hash(_octets(password))}"

    def verify(self, stored: str, password: str) -> bool:
        """Whether *password* matches *stored*; ``False`` for anything malformed."""
        split = _split_scheme(stored)
        if split is None:
            return False
        scheme, encoded = split
        verifier = _VERIFIERS.get(scheme)
        if verifier is None:
            return False
        try:
            octets = _octets(password)
        except ValueError:
            return False
        return verifier(encoded, octets)

    def needs_rehash(self, stored: str) -> bool:
        """Whether *stored* should be replaced by ``hash()`` at the next login.

        True for any scheme but ``{ARGON2ID}``, for argon2id made with other
        parameters than ours, and for malformed values.
        """
        split = _split_scheme(stored)
        if split is None or split[0] != _SCHEME_ARGON2ID:
            return True
        try:
            return self._argon2.check_needs_rehash(split[1])
        except (InvalidHashError, Argon2Error):
            return True

    def verify_dummy(self, password: str) -> None:
        """Do the work of one ``verify`` and throw the answer away.

        Called for unknown users and invalid login names, so that they take
        as long as a wrong password for a real user.
        """
        dummy = self._dummy
        if dummy is None:
            # A benign race: two threads may both make one; either will do.
            dummy = self._dummy = self.hash(secrets.token_urlsafe(16))
        self.verify(dummy, password)


def _octets(password: str) -> bytes:
    try:
        return password.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError("password is not encodable as UTF-8") from None


def _split_scheme(stored: str) -> tuple[str, str] | None:
    """``"{SCHEME}rest"`` → ``("SCHEME", "rest")``; None if there is no prefix."""
    if not stored.startswith("{"):
        return None
    end = stored.find("}", 1, _MAX_SCHEME_LEN + 2)
    if end < 2:
        return None
    # Dovecot looks schemes up case-insensitively.
    return stored[1:end].upper(), stored[end + 1 :]


def _argon2_verifier(variant: str) -> Verifier:
    """A verifier for one argon2 variant: the encoded hash must be that variant."""
    prefix = f"${variant}$"

    def verify(encoded: str, password: bytes) -> bool:
        if not encoded.startswith(prefix):
            return False
        try:
            return _ARGON2_CHECKER.verify(encoded, password)
        except (InvalidHashError, Argon2Error):
            # VerifyMismatchError is a wrong password; the rest is a
            # malformed or unsupported stored value.
            return False

    return verify


def _verify_plain(encoded: str, password: bytes) -> bool:
    # Constant time in the content; the length may leak, which is one more
    # reason PLAIN is for benchmarks only.
    try:
        expected = encoded.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected, password)


_VERIFIERS: dict[str, Verifier] = {
    _SCHEME_ARGON2ID: _argon2_verifier("argon2id"),
    _SCHEME_ARGON2I: _argon2_verifier("argon2i"),
    _SCHEME_PLAIN: _verify_plain,
}

#: The scheme names ``verify`` accepts (``hash`` writes ``ARGON2ID``).
SCHEMES: frozenset[str] = frozenset(_VERIFIERS)
