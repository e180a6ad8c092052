"""The SQLite user database: who may log in, and with which password.

Theory of operation
-------------------
One table, ``accounts``, keyed by the canonical name ``user@domain``
(``names.Account.name``); the ``user`` and ``domain`` columns are stored too
so a later change can list a domain or map it to a maildrop without parsing.
``password`` holds a Dovecot-style ``{SCHEME}...`` value (see ``passwords``).

Beside it (schema version 2):

- ``scram_sha1`` and ``scram_sha256``: SCRAM credentials (RFC 5802/7677),
  ``SCRAM-SHA-256$<iterations>:<b64 salt>$<b64 StoredKey>:<b64 ServerKey>``
  (the form PostgreSQL uses).  A stolen pair does not log in by itself, but
  with one eavesdropped exchange it does, and it lets an attacker pose as
  the server (RFC 5802 §9); it is also an offline-guessable hash like any
  other: the file stays private.  ``add`` and ``set_password`` always write
  them; an imported foreign hash has none until the first successful
  password login, when the plaintext is known.
- ``secret``: the password itself, recoverable, only when the operator asks
  for it (``store_secret=True``) because APOP (RFC 1939 §7) or CRAM-MD5
  (RFC 2195) are enabled.  Both are MD5-based and need the plaintext on the
  server: the stored secret is password-equivalent, and anyone who reads
  the file can log in as the user anywhere the password is used.  Stored as
  the password's octets (a BLOB), so any password round-trips.
- ``quota_messages`` and ``quota_bytes``: per-user limits, NULL for none.

Several processes share the file: the server and the ``mailslot user`` CLI.
The journal is WAL, so the CLI writing a password never blocks the server's
readers, and every connection has a busy timeout, so two writers queue
instead of failing with "database is locked".  The file is created mode
0o600 before SQLite opens it (SQLite gives the ``-wal`` and ``-shm`` files the
same mode): it holds password hashes.

The schema is versioned with ``PRAGMA user_version``.  ``_MIGRATIONS[i]``
takes the schema from version *i* to *i + 1*; opening a database applies the
missing ones in one ``BEGIN IMMEDIATE`` transaction, so two processes opening
an old file at once migrate it once.  Later changes (SCRAM keys, an APOP
secret, quotas) append a migration; they never edit an old one.  A database
newer than this code is refused rather than misread.

Every method blocks on disk and, for ``add``, ``set_password`` and
``verify``, on argon2: the server calls them from worker threads, several at
once.  Connections come from a small pool, one per concurrent caller, and a
connection is held only for its SQL statement, never while hashing.

``verify`` faces clients (USER/PASS, SASL PLAIN).  An invalid login name, an
unknown user and a wrong password all cost one argon2 verify and all answer
``None``, so neither the answer nor its timing tells which users exist
(RFC 1939 §13).  After a successful login with a stored value that is not
current argon2id (an imported ``{SHA512-CRYPT}``, ``{PLAIN}``...) it
rewrites the hash and the SCRAM keys from the plaintext, and fills in SCRAM
keys an imported account lacks; ``UserDB(rehash=False)`` turns both off, so
that ``verify`` never writes (benchmarks keep ``{PLAIN}`` on purpose).
``scram`` and ``secret`` face clients too, through SASL: they answer
``None`` for invalid names and unknown users alike, and the SASL mechanisms
make both cost what a known user costs.  The administrative methods raise
``InvalidName``, ``UserExists`` and ``NoSuchUser`` instead, for the CLI to
report.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import contextlib
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from mailslot.auth.names import Account, InvalidName, parse_domain, parse_login
from mailslot.auth.passwords import PasswordHasher, is_verifiable
from mailslot.sasl import ScramCredentials, scram_credentials

__all__ = [
    "BUSY_TIMEOUT",
    "SCHEMA_VERSION",
    "NoSuchUser",
    "UserDB",
    "UserDBError",
    "UserExists",
    "UserRecord",
]

logger = logging.getLogger(__name__)

#: Seconds a statement waits for another process's write lock before failing.
BUSY_TIMEOUT = 5.0

#: Mode of a newly created database file: it holds password hashes.
FILE_MODE = 0o600

# _MIGRATIONS[i] takes the schema from user_version i to i + 1.  Append only.
_MIGRATIONS: tuple[tuple[str, ...], ...] = (
    (
        """
        CREATE TABLE accounts (
            name       TEXT PRIMARY KEY NOT NULL,
            user       TEXT NOT NULL,
            domain     TEXT NOT NULL,
            password   TEXT NOT NULL,
            created    REAL NOT NULL,
            last_login REAL,
            CHECK (name = user || '@' || domain)
        )
        """,
    ),
    (
        "ALTER TABLE accounts ADD COLUMN scram_sha1 TEXT",
        "ALTER TABLE accounts ADD COLUMN scram_sha256 TEXT",
        "ALTER TABLE accounts ADD COLUMN secret BLOB",
        "ALTER TABLE accounts ADD COLUMN quota_messages INTEGER"
        " CHECK (quota_messages IS NULL OR quota_messages >= 0)",
        "ALTER TABLE accounts ADD COLUMN quota_bytes INTEGER"
        " CHECK (quota_bytes IS NULL OR quota_bytes >= 0)",
    ),
)

#: SCRAM hash name (``LookupScram.hash_name``, one of ``sasl.HASH_NAMES``) → its column.
_SCRAM_COLUMNS = {"SHA-1": "scram_sha1", "SHA-256": "scram_sha256"}

#: The columns ``list`` and ``get`` read, in ``_record``'s order.
_RECORD_COLUMNS = (
    "user, domain, created, last_login, quota_messages, quota_bytes,"
    " secret IS NOT NULL, scram_sha1 IS NOT NULL AND scram_sha256 IS NOT NULL"
)

#: The schema version this code writes and understands.
SCHEMA_VERSION = len(_MIGRATIONS)


class UserDBError(Exception):
    """The user database cannot be used (closed, or from a newer mailslot)."""


class UserExists(UserDBError):
    """``add`` of an account that already exists."""


class NoSuchUser(UserDBError):
    """``set_password`` or ``delete`` of an account that does not exist."""


@dataclass(frozen=True, slots=True, kw_only=True)
class UserRecord:
    """What ``list`` and ``get`` tell about an account (never its password).

    ``quota_messages`` and ``quota_bytes`` are None for "no limit";
    ``has_secret``: a recoverable secret is stored (APOP/CRAM-MD5 possible);
    ``has_scram``: SCRAM-SHA-1 and SCRAM-SHA-256 credentials are stored.
    """

    account: Account
    created: float
    last_login: float | None
    quota_messages: int | None
    quota_bytes: int | None
    has_secret: bool
    has_scram: bool


class UserDB:
    """Accounts and their passwords in one SQLite file.  Thread-safe."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        hasher: PasswordHasher,
        default_domain: str,
        clock: Callable[[], float] = time.time,
        rehash: bool = True,
    ) -> None:
        """Open (creating and migrating as needed) the database at *path*.

        *rehash*: upgrade a stored hash to the hasher's argon2id, and add
        missing SCRAM keys, after a successful ``verify``.  Off, ``verify``
        never writes.
        """
        try:
            self._default_domain = parse_domain(default_domain)
        except InvalidName as exc:
            raise ValueError(f"invalid default domain: {exc}") from None
        self._path = os.fspath(path)
        self._hasher = hasher
        self._clock = clock
        self._rehash_on_login = rehash
        self._lock = threading.Lock()
        self._idle: builtins.list[sqlite3.Connection] = []
        self._closed = False
        _create_private(self._path)
        try:
            with self._connection() as conn:
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    logger.warning("user database %s: journal mode is %s, not WAL", path, mode)
                _migrate(conn)
        except BaseException:
            self.close()
            raise

    @property
    def default_domain(self) -> str:
        """The canonical domain of bare logins (``john`` is ``john@<this>``)."""
        return self._default_domain

    # -- administration (the CLI) -------------------------------------------

    def add(self, login: str, password: str, *, store_secret: bool = False) -> Account:
        """Create an account.  ``InvalidName``, ``UserExists``.

        Stores the argon2id hash and SCRAM-SHA-1/-256 credentials; with
        *store_secret*, also the password itself, recoverable, for APOP and
        CRAM-MD5 (password-equivalent: see the module docstring).
        """
        account = self._parse(login)
        stored = self._hasher.hash(password)
        sha1, sha256 = _scram_columns(password)
        secret = _secret_octets(password) if store_secret else None
        try:
            self._execute(
                "INSERT INTO accounts (name, user, domain, password, created,"
                " scram_sha1, scram_sha256, secret) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    account.name,
                    account.user,
                    account.domain,
                    stored,
                    self._clock(),
                    sha1,
                    sha256,
                    secret,
                ),
            )
        except sqlite3.IntegrityError:
            raise UserExists(account.name) from None
        return account

    def add_hashed(self, login: str, stored_password: str) -> Account:
        """Create an account from an existing ``{SCHEME}`` hash (a migration).

        The value is stored as it is; it is rehashed to argon2id, and gets
        SCRAM credentials, at the first successful ``verify``.  Raises
        ``InvalidName``, ``UserExists``, and ``ValueError`` for a scheme that
        ``verify`` does not know (such an account could never log in).
        """
        account = self._parse(login)
        if not is_verifiable(stored_password):
            raise ValueError("unsupported password scheme")
        try:
            self._execute(
                "INSERT INTO accounts (name, user, domain, password, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (account.name, account.user, account.domain, stored_password, self._clock()),
            )
        except sqlite3.IntegrityError:
            raise UserExists(account.name) from None
        return account

    def set_password(self, login: str, password: str, *, store_secret: bool = False) -> None:
        """Replace an account's password.  ``InvalidName``, ``NoSuchUser``.

        Writes the hash, the SCRAM credentials and, with *store_secret*, the
        recoverable secret (else clears it), all in one statement.
        """
        account = self._parse(login)
        stored = self._hasher.hash(password)
        sha1, sha256 = _scram_columns(password)
        secret = _secret_octets(password) if store_secret else None
        changed = self._execute(
            "UPDATE accounts SET password = ?, scram_sha1 = ?, scram_sha256 = ?, secret = ?"
            " WHERE name = ?",
            (stored, sha1, sha256, secret, account.name),
        )
        if not changed:
            raise NoSuchUser(account.name)

    def set_quota(self, login: str, *, messages: int | None, bytes_: int | None) -> None:
        """Set an account's limits; None is "no limit".

        ``InvalidName``, ``NoSuchUser``; ``ValueError`` for a negative limit.
        """
        for value in (messages, bytes_):
            if value is not None and (isinstance(value, bool) or value < 0):
                raise ValueError("a quota is a non-negative integer or None")
        account = self._parse(login)
        changed = self._execute(
            "UPDATE accounts SET quota_messages = ?, quota_bytes = ? WHERE name = ?",
            (messages, bytes_, account.name),
        )
        if not changed:
            raise NoSuchUser(account.name)

    def delete(self, login: str) -> None:
        """Remove an account (not its maildrop).  ``InvalidName``, ``NoSuchUser``."""
        account = self._parse(login)
        if not self._execute("DELETE FROM accounts WHERE name = ?", (account.name,)):
            raise NoSuchUser(account.name)

    def list(self) -> builtins.list[UserRecord]:
        """Every account, sorted by canonical name."""
        with self._connection() as conn:
            rows = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM accounts ORDER BY name"  # noqa: S608
            ).fetchall()
        return [_record(row) for row in rows]

    def get(self, login: str) -> UserRecord | None:
        """The account *login* names, or None.  ``InvalidName``."""
        account = self._parse(login)
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {_RECORD_COLUMNS} FROM accounts WHERE name = ?",  # noqa: S608
                (account.name,),
            ).fetchone()
        return None if row is None else _record(row)

    # -- login (the server, from worker threads) ----------------------------

    def verify(self, login: str, password: str) -> Account | None:
        """The account if *password* is right for *login*, else None.  Blocks.

        Never raises for anything the client chose; a storage failure
        raises ``sqlite3.Error`` (the server's ``[SYS/TEMP]``).  On success,
        unless ``rehash=False``: a stored value with an old scheme or old
        parameters is replaced by a fresh hash (and fresh SCRAM keys), and
        missing SCRAM keys are added, best effort.
        """
        try:
            account = parse_login(login, default_domain=self._default_domain)
        except InvalidName:
            self._hasher.verify_dummy(password)
            return None
        found = self._stored_password(account)
        if found is None:
            self._hasher.verify_dummy(password)
            return None
        stored, has_scram = found
        if not self._hasher.verify(stored, password):
            return None
        if self._rehash_on_login:
            if self._hasher.needs_rehash(stored):
                self._rehash(account, stored, password)
            elif not has_scram:
                self._add_scram(account, stored, password)
        return account

    def scram(self, login: str, hash_name: str) -> ScramCredentials | None:
        """*login*'s SCRAM credentials for *hash_name* (``"SHA-1"``, ``"SHA-256"``).

        None for an invalid name, an unknown user, or none stored.  Blocks;
        thread-safe.  ``ValueError`` for an unknown *hash_name* (a caller bug).
        """
        column = _SCRAM_COLUMNS.get(hash_name)
        if column is None:
            raise ValueError("unknown SCRAM hash")
        value = self._lookup(login, column)
        if not isinstance(value, str):
            return None
        credentials = _decode_scram(value, hash_name)
        if credentials is None:
            logger.warning("malformed %s credentials for %s", column, login)
        return credentials

    def secret(self, login: str) -> str | None:
        """*login*'s recoverable secret (APOP, CRAM-MD5), or None.

        None for an invalid name, an unknown user, or no secret stored (the
        operator did not enable it for this user).  Blocks; thread-safe.
        """
        value = self._lookup(login, "secret")
        if not isinstance(value, bytes):
            return None
        return value.decode("utf-8", "surrogateescape")

    def record_login(self, account: Account, when: float) -> None:
        """Note a successful login at *when*; a no-op if the account is gone."""
        self._execute("UPDATE accounts SET last_login = ? WHERE name = ?", (when, account.name))

    # -- lifetime ------------------------------------------------------------

    def close(self) -> None:
        """Close every connection; idempotent.  Connections in use close on return."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()

    def __enter__(self) -> UserDB:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- internals -----------------------------------------------------------

    def _parse(self, login: str) -> Account:
        return parse_login(login, default_domain=self._default_domain)

    def _stored_password(self, account: Account) -> tuple[str, bool] | None:
        """The stored value and whether both SCRAM keys are there."""
        with self._connection() as conn:
            row = conn.execute(
                "SELECT password, scram_sha1 IS NOT NULL AND scram_sha256 IS NOT NULL"
                " FROM accounts WHERE name = ?",
                (account.name,),
            ).fetchone()
        if row is None or not isinstance(row[0], str):
            return None
        stored: str = row[0]
        return stored, bool(row[1])

    def _lookup(self, login: str, column: str) -> object:
        """One column of *login*'s row; None for invalid or unknown names."""
        try:
            account = parse_login(login, default_domain=self._default_domain)
        except InvalidName:
            return None
        with self._connection() as conn:
            row = conn.execute(
                f"SELECT {column} FROM accounts WHERE name = ?",  # noqa: S608
                (account.name,),
            ).fetchone()
        return None if row is None else row[0]

    def _rehash(self, account: Account, old: str, password: str) -> None:
        try:
            fresh = self._hasher.hash(password)
            sha1, sha256 = _scram_columns(password)
            # Compare-and-swap: a password changed meanwhile wins.
            self._execute(
                "UPDATE accounts SET password = ?, scram_sha1 = ?, scram_sha256 = ?"
                " WHERE name = ? AND password = ?",
                (fresh, sha1, sha256, account.name, old),
            )
        except Exception:
            # Not a reason to refuse a login that just succeeded.
            logger.warning("could not rehash the password of %s", account.name, exc_info=True)

    def _add_scram(self, account: Account, stored: str, password: str) -> None:
        try:
            sha1, sha256 = _scram_columns(password)
            self._execute(
                "UPDATE accounts SET scram_sha1 = ?, scram_sha256 = ?"
                " WHERE name = ? AND password = ?"
                " AND (scram_sha1 IS NULL OR scram_sha256 IS NULL)",
                (sha1, sha256, account.name, stored),
            )
        except Exception:
            logger.warning("could not add SCRAM keys for %s", account.name, exc_info=True)

    def _execute(self, sql: str, params: tuple[Any, ...]) -> int:
        """Run one writing statement (autocommit); return the rows it changed."""
        with self._connection() as conn:
            return conn.execute(sql, params).rowcount

    @contextlib.contextmanager
    def _connection(self) -> Iterator[sqlite3.Connection]:
        """Lend a pooled connection to one caller for one short use."""
        with self._lock:
            if self._closed:
                raise UserDBError("the user database is closed")
            conn = self._idle.pop() if self._idle else None
        if conn is None:
            conn = self._connect()
        try:
            yield conn
        finally:
            if conn.in_transaction:
                conn.rollback()
            with self._lock:
                keep = not self._closed
                if keep:
                    self._idle.append(conn)
            if not keep:
                conn.close()

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, explicit BEGIN where we need one.
        # check_same_thread=False: pooled connections move between threads,
        # but only one thread uses a connection at a time.
        # timeout: SQLite's busy_timeout, for the other processes' writes.
        return sqlite3.connect(
            self._path,
            timeout=BUSY_TIMEOUT,
            isolation_level=None,
            check_same_thread=False,
        )


def _record(row: tuple[Any, ...]) -> UserRecord:
    user, domain, created, last_login, quota_messages, quota_bytes, secret, scram = row
    return UserRecord(
        account=Account(user=user, domain=domain),
        created=float(created),
        last_login=None if last_login is None else float(last_login),
        quota_messages=None if quota_messages is None else int(quota_messages),
        quota_bytes=None if quota_bytes is None else int(quota_bytes),
        has_secret=bool(secret),
        has_scram=bool(scram),
    )


def _secret_octets(password: str) -> bytes:
    try:
        return password.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        raise ValueError("password is not encodable as UTF-8") from None


def _scram_columns(password: str) -> tuple[str, str]:
    """Fresh SCRAM-SHA-1 and SCRAM-SHA-256 credentials, encoded for storage."""
    return (
        _encode_scram(scram_credentials(password, "SHA-1"), "SHA-1"),
        _encode_scram(scram_credentials(password, "SHA-256"), "SHA-256"),
    )


def _encode_scram(credentials: ScramCredentials, hash_name: str) -> str:
    """``SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>``, base64."""

    def b64(data: bytes) -> str:
        return base64.b64encode(data).decode("ascii")

    return (
        f"SCRAM-{hash_name}${credentials.iterations:d}:{b64(credentials.salt)}"
        f"${b64(credentials.stored_key)}:{b64(credentials.server_key)}"
    )


def _decode_scram(value: str, hash_name: str) -> ScramCredentials | None:
    """The inverse of ``_encode_scram``; None if *value* is malformed."""
    mechanism, _, rest = value.partition("$")
    parameters, _, keys = rest.partition("$")
    iterations, _, salt = parameters.partition(":")
    stored_key, _, server_key = keys.partition(":")
    if mechanism != f"SCRAM-{hash_name}" or not iterations.isascii() or not iterations.isdigit():
        return None
    try:
        salt_octets, stored_octets, server_octets = (
            base64.b64decode(part.encode("ascii"), validate=True)
            for part in (salt, stored_key, server_key)
        )
    except (ValueError, binascii.Error):
        return None
    return ScramCredentials(
        salt=salt_octets,
        iterations=int(iterations),
        stored_key=stored_octets,
        server_key=server_octets,
    )


def _create_private(path: str) -> None:
    """Create *path* empty with mode 0o600 unless it exists."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, FILE_MODE)
    except FileExistsError:
        return
    try:
        # The umask may have taken bits away; make it exactly FILE_MODE.
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _migrate(conn: sqlite3.Connection) -> None:
    """Bring the schema to SCHEMA_VERSION, in one write transaction."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        if version > SCHEMA_VERSION:
            raise UserDBError(
                f"user database schema version {version} is newer than"
                f" this mailslot's ({SCHEMA_VERSION})"
            )
        for statements in _MIGRATIONS[version:]:
            for statement in statements:
                conn.execute(statement)
        if version != SCHEMA_VERSION:
            # PRAGMA takes no parameters; SCHEMA_VERSION is our own int.
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION:d}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
