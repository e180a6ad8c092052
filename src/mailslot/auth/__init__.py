"""Who may log in: login names, password hashing and the user database.

- ``names``: a login (``john@host``, ``john+host``, ``john``) becomes a
  canonical, validated ``Account`` that is safe to use in a path.
- ``passwords``: Dovecot-style ``{SCHEME}`` hashes, argon2id by default.
- ``userdb``: the SQLite user database; its ``verify`` is blocking and
  thread-safe, for the server's worker threads.

This package imports nothing else of mailslot (DESIGN.md, "Who may import
whom").
"""

from mailslot.auth.names import MAX_NAME_OCTETS, Account, InvalidName, parse_domain, parse_login
from mailslot.auth.passwords import SCHEMES, HashParams, PasswordHasher
from mailslot.auth.userdb import (
    SCHEMA_VERSION,
    NoSuchUser,
    UserDB,
    UserDBError,
    UserExists,
    UserRecord,
)

__all__ = [
    "MAX_NAME_OCTETS",
    "SCHEMA_VERSION",
    "SCHEMES",
    "Account",
    "HashParams",
    "InvalidName",
    "NoSuchUser",
    "PasswordHasher",
    "UserDB",
    "UserDBError",
    "UserExists",
    "UserRecord",
    "parse_domain",
    "parse_login",
]
