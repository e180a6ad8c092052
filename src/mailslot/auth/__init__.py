"""Who may log in: login names, password hashing and the user database.

- ``names``: a login (``john@host``, ``john+host``, ``john``) becomes a
  canonical, validated ``Account`` that is safe to use in a path.
- ``passwords``: Dovecot-style ``{SCHEME}`` hashes: argon2id written,
  argon2, bcrypt, SHA-crypt, salted SHA and more read.
- ``userdb``: the SQLite user database: password hashes, SCRAM credentials,
  optional APOP/CRAM-MD5 secrets, quotas.  Its ``verify``, ``scram`` and
  ``secret`` are blocking and thread-safe, for the server's worker threads.
- ``passwdfile``: import a Dovecot passwd-file.

Of the rest of mailslot this package imports only ``mailslot.sasl`` (for
SCRAM credentials), which itself imports nothing (DESIGN.md, "Who may import
whom").
"""

from mailslot.auth.names import MAX_NAME_OCTETS, Account, InvalidName, parse_domain, parse_login
from mailslot.auth.passwdfile import (
    ImportReport,
    InvalidLine,
    PasswdEntry,
    import_passwd_file,
    parse_passwd_file,
)
from mailslot.auth.passwords import SCHEMES, HashParams, PasswordHasher, is_verifiable, scheme_of
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
    "ImportReport",
    "InvalidLine",
    "InvalidName",
    "NoSuchUser",
    "PasswdEntry",
    "PasswordHasher",
    "UserDB",
    "UserDBError",
    "UserExists",
    "UserRecord",
    "import_passwd_file",
    "is_verifiable",
    "parse_domain",
    "parse_login",
    "parse_passwd_file",
    "scheme_of",
]
