"""The SQLite user database: who may log in, and with which password.

Theory of operation
-------------------
One table, ``accounts``, keyed by the canonical name ``user@domain``
(``names.Account.name``); the ``user`` and ``domain`` columns are stored too
so a later change can list a domain or map it to a maildrop without parsing.
``password`` holds a Dovecot-style ``{SCHEME}...`` value (see ``passwords``).

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

``verify`` is the only method that faces clients.  An invalid login name, an
unknown user and a wrong password all cost one argon2 verify and all answer
``None``, so neither the answer nor its timing tells which users exist
(RFC 1939 §13).  The administrative methods raise ``InvalidName``,
``UserExists`` and ``NoSuchUser`` instead, for the CLI to report.
"""

from __future__ import annotations

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
from mailslot.auth.passwords import PasswordHasher

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
    """What ``list`` and ``get`` tell about an account (never its password)."""

    account: Account
    created: float
    last_login: float | None


class UserDB:
    """Accounts and their passwords in one SQLite file.  Thread-safe."""

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        hasher: PasswordHasher,
        default_domain: str,
        clock: Callable[[], float] = time.time,
    ) -> None:
        try:
            self._default_domain = parse_domain(default_domain)
        except InvalidName as exc:
            raise ValueError(f"invalid default domain: {exc}") from None
        self._path = os.fspath(path)
        self._hasher = hasher
        self._clock = clock
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

    # -- administration (the CLI) -------------------------------------------

    def add(self, login: str, password: str) -> Account:
        """Create an account.  ``InvalidName``, ``UserExists``."""
        account = self._parse(login)
        stored = self._hasher.hash(password)
        try:
            self._execute(
                "INSERT INTO accounts (name, user, domain, password, created)"
                " VALUES (?, ?, ?, ?, ?)",
                (account.name, account.user, account.domain, stored, self._clock()),
            )
        except sqlite3.IntegrityError:
            raise UserExists(account.name) from None
        return account

    def set_password(self, login: str, password: str) -> None:
        """Replace an account's password.  ``InvalidName``, ``NoSuchUser``."""
        account = self._parse(login)
        stored = self._hasher.hash(password)
        changed = self._execute(
            "UPDATE accounts SET password = ? WHERE name = ?", (stored, account.name)
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
                "SELECT user, domain, created, last_login FROM accounts ORDER BY name"
            ).fetchall()
        return [_record(row) for row in rows]

    def get(self, login: str) -> UserRecord | None:
        """The account *login* names, or None.  ``InvalidName``."""
        account = self._parse(login)
        with self._connection() as conn:
            row = conn.execute(
                "SELECT user, domain, created, last_login FROM accounts WHERE name = ?",
                (account.name,),
            ).fetchone()
        return None if row is None else _record(row)

    # -- login (the server, from worker threads) ----------------------------

    def verify(self, login: str, password: str) -> Account | None:
        """The account if *password* is right for *login*, else None.  Blocks.

        Never raises for anything the client chose; a storage failure
        raises ``sqlite3.Error`` (the server's ``[SYS/TEMP]``).  On success,
        a stored value with an old scheme or old parameters is replaced by a
        fresh hash, best effort.
        """
        try:
            account = parse_login(login, default_domain=self._default_domain)
        except InvalidName:
            self._hasher.verify_dummy(password)
            return None
        stored = self._stored_password(account)
        if stored is None:
            self._hasher.verify_dummy(password)
            return None
        if not self._hasher.verify(stored, password):
            return None
        if self._hasher.needs_rehash(stored):
            self._rehash(account, stored, password)
        return account

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

    def _stored_password(self, account: Account) -> str | None:
        with self._connection() as conn:
            row = conn.execute(
                "SELECT password FROM accounts WHERE name = ?", (account.name,)
            ).fetchone()
        if row is None or not isinstance(row[0], str):
            return None
        stored: str = row[0]
        return stored

    def _rehash(self, account: Account, old: str, password: str) -> None:
        try:
            fresh = self._hasher.hash(password)
            # Compare-and-swap: a password changed meanwhile wins.
            self._execute(
                "UPDATE accounts SET password = ? WHERE name = ? AND password = ?",
                (fresh, account.name, old),
            )
        except Exception:
            # Not a reason to refuse a login that just succeeded.
            logger.warning("could not rehash the password of %s", account.name, exc_info=True)

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
    user, domain, created, last_login = row
    return UserRecord(
        account=Account(user=user, domain=domain),
        created=float(created),
        last_login=None if last_login is None else float(last_login),
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
