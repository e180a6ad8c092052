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
``(encoded, password_octets) -> bool``.  Schemes accepted (``SCHEMES``), with
Dovecot's names and encodings (``doveadm pw -s SCHEME`` makes each of them):

- ``{ARGON2ID}`` and ``{ARGON2I}``: the cost parameters are read from the
  encoded hash itself.  argon2id with one lane (ours, and Dovecot's, which
  uses libsodium) is computed by libsodium through PyNaCl, whose SIMD code
  takes half the time of argon2-cffi's; anything else by argon2-cffi.  Both
  read and write the same PHC strings.
- ``{BLF-CRYPT}`` (alias ``{BCRYPT}``): bcrypt, ``$2y$``/``$2b$``/``$2a$``,
  checked by the ``bcrypt`` package.  Like crypt(3), only the first 72
  octets of the password count.
- ``{SHA512-CRYPT}`` and ``{SHA256-CRYPT}``: ``$6$``/``$5$``, Ulrich
  Drepper's SHA-crypt ("Unix crypt using SHA-256 and SHA-512"), including
  ``rounds=``, implemented here on ``hashlib`` (the stdlib ``crypt`` module
  is deprecated, PEP 594).  Pure Python: some milliseconds for the default
  5000 rounds, one more reason to rehash at the first login.
- ``{CRYPT}``: what crypt(3) would accept, limited to the three above (the
  value's own ``$6$``/``$5$``/``$2y$`` prefix picks the algorithm);
  DES-crypt and MD5-crypt are refused.
- ``{SSHA512}``, ``{SSHA256}``, ``{SSHA}``: base64 of
  ``digest(password + salt) + salt``; ``{SHA512}``, ``{SHA256}``, ``{SHA}``
  (alias ``{SHA1}``): base64 of ``digest(password)``, or its hex form, which
  Dovecot also accepts.  A ``.HEX`` or ``.B64`` suffix on the scheme name
  (``{SHA256.HEX}``) names the encoding explicitly, as in Dovecot.
- ``{SCRAM-SHA-256}`` and ``{SCRAM-SHA-1}``: Dovecot's stored SCRAM keys,
  ``iterations,salt,StoredKey,ServerKey`` in base64; checked by recomputing
  the keys from the password's raw octets, as Dovecot does.
- ``{PLAIN}`` (aliases ``{CLEAR}``, ``{CLEARTEXT}``): the password in
  clear.  It exists for benchmarks (logins that cost nothing) and for
  migrating from cleartext databases; never use it for real accounts.

Every comparison of a computed hash with a stored one is constant-time
(``hmac.compare_digest``).  A successful login against any scheme other
than the current one reports ``needs_rehash`` so the user database upgrades
it to argon2id; nothing but argon2id is ever written.

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

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable
from dataclasses import dataclass

import argon2
import bcrypt
import nacl.exceptions
import nacl.pwhash
from argon2.exceptions import Argon2Error, InvalidHashError

__all__ = ["SCHEMES", "HashParams", "PasswordHasher", "is_verifiable", "scheme_of"]

_SCHEME_ARGON2ID = "ARGON2ID"
_SCHEME_ARGON2I = "ARGON2I"
_SCHEME_PLAIN = "PLAIN"
_SCHEME_CRYPT = "CRYPT"

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
        octets = _octets(password)
        params = self._params
        if params.parallelism == 1:
            encoded = nacl.pwhash.argon2id.str(
                octets, opslimit=params.time_cost, memlimit=params.memory_kib * 1024
            ).decode("ascii")
        else:
            encoded = self._argon2.hash(octets)
        return f"{{{_SCHEME_ARGON2ID}}}{encoded}"

    def verify(self, stored: str, password: str) -> bool:
        """Whether *password* matches *stored*; ``False`` for anything malformed."""
        split = _split_scheme(stored)
        if split is None:
            return False
        scheme, encoded = split
        verifier = _verifier(scheme)
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


def scheme_of(stored: str) -> str | None:
    """The upper-cased scheme name of ``{SCHEME}...``, or None without a prefix."""
    split = _split_scheme(stored)
    return None if split is None else split[0]


def is_verifiable(stored: str) -> bool:
    """Whether ``verify`` knows the scheme of *stored*.

    For ``{CRYPT}`` the algorithm prefix must be a known one too.  Whether
    the hash itself is well formed is not checked.
    """
    split = _split_scheme(stored)
    if split is None:
        return False
    scheme, encoded = split
    if _verifier(scheme) is None:
        return False
    return scheme != _SCHEME_CRYPT or _crypt_verifier(encoded) is not None


def _verifier(scheme: str) -> Verifier | None:
    verifier = _VERIFIERS.get(scheme)
    if verifier is None:
        # Dovecot's explicit encodings: {SHA256.HEX}, {SSHA512.B64}...
        base, dot, encoding = scheme.partition(".")
        if dot and base in _DIGESTS and encoding in _ENCODINGS:
            verifier = _digest_verifier(base, _ENCODINGS[encoding])
    return verifier


def _argon2_verifier(variant: str) -> Verifier:
    """A verifier for one argon2 variant: the encoded hash must be that variant."""
    prefix = f"${variant}$"

    def verify(encoded: str, password: bytes) -> bool:
        if not encoded.startswith(prefix):
            return False
        try:
            if variant == "argon2id" and _sodium_can_verify(encoded):
                try:
                    return bool(nacl.pwhash.argon2id.verify(encoded.encode("ascii"), password))
                except nacl.exceptions.InvalidkeyError:
                    return False
            return _ARGON2_CHECKER.verify(encoded, password)
        except (InvalidHashError, Argon2Error):
            # VerifyMismatchError is a wrong password; the rest is a
            # malformed or unsupported stored value.
            return False

    return verify


def _sodium_can_verify(encoded: str) -> bool:
    """libsodium computes argon2id v1.3 with one lane only, and answers a
    hash it cannot compute like a wrong password: ask argon2-cffi first."""
    params = argon2.extract_parameters(encoded)  # InvalidHashError if malformed
    return (
        params.parallelism == 1
        and params.version == 19
        and params.salt_len >= nacl.pwhash.argon2id.SALTBYTES
        and params.memory_cost * 1024 >= nacl.pwhash.argon2id.MEMLIMIT_MIN
        and params.memory_cost * 1024 <= nacl.pwhash.argon2id.MEMLIMIT_MAX
        and params.time_cost >= nacl.pwhash.argon2id.OPSLIMIT_MIN
        and params.time_cost <= nacl.pwhash.argon2id.OPSLIMIT_MAX
    )


def _verify_plain(encoded: str, password: bytes) -> bool:
    # Constant time in the content; the length may leak, which is one more
    # reason PLAIN is for benchmarks only.
    try:
        expected = encoded.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return hmac.compare_digest(expected, password)


# -- crypt(3) family -----------------------------------------------------------

# crypt(3) takes a C string: a password with NUL in it was never hashed as
# such, so it matches nothing.
_NUL = b"\x00"

#: bcrypt reads at most this many password octets (crypt_blowfish).
_BCRYPT_MAX_PASSWORD = 72
_BCRYPT = re.compile(r"\$2[aby]\$(0[4-9]|[12][0-9]|3[01])\$[./A-Za-z0-9]{53}")


def _verify_bcrypt(encoded: str, password: bytes) -> bool:
    if _NUL in password or not _BCRYPT.fullmatch(encoded):
        return False
    try:
        # The bcrypt package refuses more than 72 octets where crypt(3)
        # ignores the rest; the stored hash was made the crypt(3) way.
        return bcrypt.checkpw(password[:_BCRYPT_MAX_PASSWORD], encoded.encode("ascii"))
    except ValueError:
        return False


# SHA-crypt ("Unix crypt using SHA-256 and SHA-512", Ulrich Drepper, 2007).
_CRYPT64 = "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_SHA_CRYPT_DEFAULT_ROUNDS = 5000
_SHA_CRYPT_MIN_ROUNDS = 1000
_SHA_CRYPT_MAX_ROUNDS = 999_999_999
_SHA_CRYPT_MAX_SALT = 16
_SHA_CRYPT_ROUNDS = re.compile(r"rounds=([1-9][0-9]{0,8})\$")


@dataclass(frozen=True, slots=True)
class _ShaCrypt:
    ident: str  # "$5$" or "$6$"
    digest: str  # hashlib name
    size: int  # digest octets
    # The spec's byte order for the output: groups of three digest octets,
    # each written as four characters, then a final short group.
    groups: tuple[tuple[int, int, int], ...]
    tail: tuple[tuple[int, int, int], int]

    @property
    def encoded_length(self) -> int:
        return (self.size * 8 + 5) // 6


_SHA256_CRYPT = _ShaCrypt(
    ident="$5$",
    digest="sha256",
    size=32,
    groups=tuple((i, (i + 10) % 30, (i + 20) % 30) for i in (0, 21, 12, 3, 24, 15, 6, 27, 18, 9)),
    tail=((-1, 31, 30), 3),
)
_SHA512_CRYPT = _ShaCrypt(
    ident="$6$",
    digest="sha512",
    size=64,
    groups=tuple(
        (i, (i + 21) % 63, (i + 42) % 63)
        for i in (0, 22, 44, 3, 25, 47, 6, 28, 50, 9, 31, 53, 12, 34, 56, 15, 37, 59, 18, 40, 62)
    ),
    tail=((-1, -1, 63), 2),
)


def _sha_crypt_verifier(algorithm: _ShaCrypt) -> Verifier:
    def verify(encoded: str, password: bytes) -> bool:
        parsed = _parse_sha_crypt(algorithm, encoded)
        if parsed is None or _NUL in password:
            return False
        rounds, salt, expected = parsed
        actual = _sha_crypt(algorithm, password, salt, rounds)
        return hmac.compare_digest(actual.encode("ascii"), expected.encode("ascii"))

    return verify


def _parse_sha_crypt(algorithm: _ShaCrypt, encoded: str) -> tuple[int, bytes, str] | None:
    """``$5$[rounds=N$]salt$hash`` → (rounds, salt, hash); None if malformed."""
    if not encoded.startswith(algorithm.ident):
        return None
    rest = encoded[len(algorithm.ident) :]
    rounds = _SHA_CRYPT_DEFAULT_ROUNDS
    match = _SHA_CRYPT_ROUNDS.match(rest)
    if match is not None:
        rounds = int(match.group(1))
        rest = rest[match.end() :]
        # crypt(3) would write a clamped count, so an out-of-range one was
        # never its output.
        if not _SHA_CRYPT_MIN_ROUNDS <= rounds <= _SHA_CRYPT_MAX_ROUNDS:
            return None
    salt, separator, expected = rest.partition("$")
    if (
        not separator
        or len(salt) > _SHA_CRYPT_MAX_SALT
        or len(expected) != algorithm.encoded_length
        or not all(char in _CRYPT64 for char in expected)
    ):
        return None
    try:
        salt_octets = salt.encode("utf-8")
    except UnicodeEncodeError:
        return None
    return rounds, salt_octets, expected


def _sha_crypt(algorithm: _ShaCrypt, password: bytes, salt: bytes, rounds: int) -> str:
    """The hash part of SHA-crypt, following the spec's numbered steps."""
    name, size = algorithm.digest, algorithm.size

    def digest(data: bytes) -> bytes:
        return hashlib.new(name, data).digest()

    length = len(password)
    # Steps 4-8: digest B.
    b = digest(password + salt + password)
    # Steps 1-3, 9-12: digest A.
    a = hashlib.new(name, password + salt)
    remaining = length
    while remaining > size:
        a.update(b)
        remaining -= size
    a.update(b[:remaining])
    bits = length
    while bits:
        a.update(b if bits & 1 else password)
        bits >>= 1
    result = a.digest()
    # Steps 13-16: the P sequence; steps 17-20: the S sequence.
    p_seq = (digest(password * length) * (length // size + 1))[:length]
    s_seq = digest(salt * (16 + result[0]))[: len(salt)]
    # Step 21: the rounds.  Only C changes from round to round, so the
    # fixed parts around it are joined once (the pattern repeats every 42).
    pieces = []
    for i in range(42):
        middle = (s_seq if i % 3 else b"") + (p_seq if i % 7 else b"")
        pieces.append((p_seq + middle, b"") if i & 1 else (b"", middle + p_seq))
    for i in range(rounds):
        before, after = pieces[i % 42]
        result = digest(before + result + after)
    # Step 22: encode, in the spec's byte order.
    out = []
    for group in algorithm.groups:
        out.append(_crypt64_group(result, group, 4))
    out.append(_crypt64_group(result, *algorithm.tail))
    return "".join(out)


def _crypt64_group(data: bytes, indexes: tuple[int, int, int], chars: int) -> str:
    """The spec's ``b64_from_24bit``; an index of -1 stands for a zero octet."""
    high, middle, low = (data[i] if i >= 0 else 0 for i in indexes)
    word = (high << 16) | (middle << 8) | low
    out = []
    for _ in range(chars):
        out.append(_CRYPT64[word & 0x3F])
        word >>= 6
    return "".join(out)


_CRYPT_ALGORITHMS: tuple[tuple[str, Verifier], ...] = (
    ("$6$", _sha_crypt_verifier(_SHA512_CRYPT)),
    ("$5$", _sha_crypt_verifier(_SHA256_CRYPT)),
    ("$2y$", _verify_bcrypt),
    ("$2b$", _verify_bcrypt),
    ("$2a$", _verify_bcrypt),
)


def _crypt_verifier(encoded: str) -> Verifier | None:
    for prefix, verifier in _CRYPT_ALGORITHMS:
        if encoded.startswith(prefix):
            return verifier
    return None


def _verify_crypt(encoded: str, password: bytes) -> bool:
    """``{CRYPT}``: the algorithm named by the value's own ``$id$`` prefix."""
    verifier = _crypt_verifier(encoded)
    return verifier is not None and verifier(encoded, password)


# -- plain digests ---------------------------------------------------------------

#: Scheme → (hashlib name, salted).  The salted value is
#: ``digest(password + salt) + salt``.
_DIGESTS: dict[str, tuple[str, bool]] = {
    "SHA": ("sha1", False),
    "SHA1": ("sha1", False),
    "SHA256": ("sha256", False),
    "SHA512": ("sha512", False),
    "SSHA": ("sha1", True),
    "SSHA256": ("sha256", True),
    "SSHA512": ("sha512", True),
}
#: Dovecot's ``{SCHEME.ENCODING}`` suffixes.
_ENCODINGS = {"HEX": "hex", "B64": "base64", "BASE64": "base64"}
_HEX = re.compile(r"[0-9a-fA-F]*")


def _digest_verifier(scheme: str, encoding: str | None) -> Verifier:
    """*encoding* None: base64, or hex if the value has exactly a hex digest's length."""
    name, salted = _DIGESTS[scheme]
    size = hashlib.new(name).digest_size

    def verify(encoded: str, password: bytes) -> bool:
        raw = _decode_digest(encoded, encoding, None if salted else size)
        if raw is None or len(raw) < size or (len(raw) == size) == salted:
            return False
        expected, salt = raw[:size], raw[size:]
        return hmac.compare_digest(hashlib.new(name, password + salt).digest(), expected)

    return verify


def _decode_digest(encoded: str, encoding: str | None, unsalted_size: int | None) -> bytes | None:
    if encoding is None:
        # Dovecot takes an unsalted digest in hex too, recognised by length.
        is_hex = unsalted_size is not None and len(encoded) == 2 * unsalted_size
        encoding = "hex" if is_hex and _HEX.fullmatch(encoded) else "base64"
    try:
        if encoding == "hex":
            if not _HEX.fullmatch(encoded):
                return None
            return bytes.fromhex(encoded)
        return base64.b64decode(encoded.encode("ascii"), validate=True)
    except (ValueError, binascii.Error):  # UnicodeEncodeError is a ValueError
        return None


# -- Dovecot's stored SCRAM keys -------------------------------------------------

#: Lowest iteration count accepted in a stored SCRAM value (RFC 7677 §4).
_SCRAM_MIN_ITERATIONS = 4096


def _scram_verifier(digest: str) -> Verifier:
    """``{SCRAM-SHA-256}iterations,salt,StoredKey,ServerKey`` (base64 fields)."""
    size = hashlib.new(digest).digest_size

    def verify(encoded: str, password: bytes) -> bool:
        fields = encoded.split(",")
        if len(fields) != 4 or not re.fullmatch(r"[1-9][0-9]{3,8}", fields[0]):
            return False
        iterations = int(fields[0])
        try:
            salt, stored_key, server_key = (
                base64.b64decode(field.encode("ascii"), validate=True) for field in fields[1:]
            )
        except (ValueError, binascii.Error):
            return False
        if iterations < _SCRAM_MIN_ITERATIONS or not salt or len(stored_key) != size:
            return False
        # RFC 5802 §3 from the raw octets: Dovecot does no SASLprep.
        salted = hashlib.pbkdf2_hmac(digest, password, salt, iterations)
        client_key = hmac.new(salted, b"Client Key", digest).digest()
        server = hmac.new(salted, b"Server Key", digest).digest()
        stored_ok = hmac.compare_digest(hashlib.new(digest, client_key).digest(), stored_key)
        return hmac.compare_digest(server, server_key) and stored_ok

    return verify


_VERIFIERS: dict[str, Verifier] = {
    _SCHEME_ARGON2ID: _argon2_verifier("argon2id"),
    _SCHEME_ARGON2I: _argon2_verifier("argon2i"),
    "BLF-CRYPT": _verify_bcrypt,
    "BCRYPT": _verify_bcrypt,
    "SHA512-CRYPT": _sha_crypt_verifier(_SHA512_CRYPT),
    "SHA256-CRYPT": _sha_crypt_verifier(_SHA256_CRYPT),
    _SCHEME_CRYPT: _verify_crypt,
    **{scheme: _digest_verifier(scheme, None) for scheme in _DIGESTS},
    "SCRAM-SHA-1": _scram_verifier("sha1"),
    "SCRAM-SHA-256": _scram_verifier("sha256"),
    _SCHEME_PLAIN: _verify_plain,
    "CLEAR": _verify_plain,
    "CLEARTEXT": _verify_plain,
}

#: The scheme names ``verify`` accepts (``hash`` writes ``ARGON2ID``).  The
#: digest schemes also take a ``.HEX``/``.B64`` suffix.
SCHEMES: frozenset[str] = frozenset(_VERIFIERS)
