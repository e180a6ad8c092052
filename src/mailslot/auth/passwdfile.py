"""Import a Dovecot passwd-file into the user database.

Theory of operation
-------------------
A Dovecot passwd-file has one account per line, in ``/etc/passwd`` shape::

    user:{SCHEME}hash:uid:gid:gecos:home:shell:extra_fields

Only the first two fields matter here; the rest (and lines with only two
fields) are accepted and ignored.  Blank lines and lines starting with
``#`` (after blanks) are skipped.  A password with a ``{SCHEME}`` prefix is
taken as it is, if ``passwords`` can verify that scheme.  A password
without a prefix is a crypt(3) value, as Dovecot's default ``{CRYPT}``
scheme would read it: ``$6$`` becomes ``{SHA512-CRYPT}``, ``$5$``
``{SHA256-CRYPT}``, ``$2y$``/``$2b$``/``$2a$`` ``{BLF-CRYPT}``; anything else
(DES- or MD5-crypt, ``*`` or ``!`` for a locked account) is refused.

The hash is stored as it is (``UserDB.add_hashed``): no plaintext is known,
so there are no SCRAM keys yet.  The first successful password login
rewrites it as argon2id and adds the SCRAM keys (``UserDB.verify``).

The file holds password hashes: nothing in the report quotes a line.  An
invalid line is reported by number with a fixed reason.  Accounts that
already exist are left alone and counted; a name that appears twice in the
file is imported once, and the second line is reported.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from mailslot.auth.names import Account, InvalidName, parse_login
from mailslot.auth.passwords import is_verifiable
from mailslot.auth.userdb import UserDB, UserExists

__all__ = ["ImportReport", "InvalidLine", "PasswdEntry", "import_passwd_file", "parse_passwd_file"]

#: crypt(3) prefix → the scheme Dovecot would use for it.
_CRYPT_PREFIXES = (
    ("$6$", "SHA512-CRYPT"),
    ("$5$", "SHA256-CRYPT"),
    ("$2y$", "BLF-CRYPT"),
    ("$2b$", "BLF-CRYPT"),
    ("$2a$", "BLF-CRYPT"),
)


@dataclass(frozen=True, slots=True, kw_only=True)
class InvalidLine:
    """A line that was not imported: its 1-based number and a fixed reason."""

    line: int
    reason: str


@dataclass(frozen=True, slots=True, kw_only=True)
class PasswdEntry:
    """One account line: the login as written and the ``{SCHEME}`` value to store."""

    line: int
    login: str
    stored_password: str


@dataclass(frozen=True, slots=True, kw_only=True)
class ImportReport:
    """What ``import_passwd_file`` did (or, with ``dry_run``, would do)."""

    imported: int
    skipped_existing: int
    invalid: tuple[InvalidLine, ...]
    dry_run: bool


def parse_passwd_file(data: bytes) -> tuple[list[PasswdEntry], list[InvalidLine]]:
    """Split passwd-file contents into account entries and invalid lines."""
    entries: list[PasswdEntry] = []
    invalid: list[InvalidLine] = []
    for number, raw in enumerate(data.split(b"\n"), start=1):
        try:
            text = raw.removesuffix(b"\r").decode("utf-8")
        except UnicodeDecodeError:
            invalid.append(InvalidLine(line=number, reason="not UTF-8"))
            continue
        if not text.strip() or text.lstrip().startswith("#"):
            continue
        entry = _parse_line(number, text)
        if isinstance(entry, InvalidLine):
            invalid.append(entry)
        else:
            entries.append(entry)
    return entries, invalid


def import_passwd_file(
    db: UserDB,
    path: str | os.PathLike[str],
    *,
    dry_run: bool = False,
    domain: str | None = None,
) -> ImportReport:
    """Add every account of the passwd-file at *path* that *db* lacks.

    *domain*: the domain of user names without ``@`` (Dovecot's per-domain
    files, ``passwd-file /etc/dovecot/%d/passwd``); by default the user
    database's default domain.  With *dry_run* nothing is written and the
    report says what would be.  ``OSError`` if the file cannot be read;
    ``sqlite3.Error`` if the database fails.
    """
    with open(path, "rb") as file:
        data = file.read()
    entries, invalid = parse_passwd_file(data)
    imported = skipped = 0
    first_line: dict[str, int] = {}
    for entry in entries:
        login = entry.login if domain is None or "@" in entry.login else f"{entry.login}@{domain}"
        try:
            account = parse_login(login, default_domain=db.default_domain)
        except InvalidName as exc:
            invalid.append(InvalidLine(line=entry.line, reason=f"invalid user name: {exc}"))
            continue
        if account.name in first_line:
            reason = f"duplicate of line {first_line[account.name]}"
            invalid.append(InvalidLine(line=entry.line, reason=reason))
            continue
        first_line[account.name] = entry.line
        if _add_unless_exists(db, account, entry.stored_password, dry_run=dry_run):
            skipped += 1
        else:
            imported += 1
    invalid.sort(key=lambda item: item.line)
    return ImportReport(
        imported=imported, skipped_existing=skipped, invalid=tuple(invalid), dry_run=dry_run
    )


def _add_unless_exists(
    db: UserDB, account: Account, stored_password: str, *, dry_run: bool
) -> bool:
    """Add the account unless it exists (in a dry run, only look); return whether it existed."""
    if dry_run:
        return db.get(account.name) is not None
    try:
        db.add_hashed(account.name, stored_password)
    except UserExists:
        return True
    return False


def _parse_line(number: int, text: str) -> PasswdEntry | InvalidLine:
    fields = text.split(":")
    if len(fields) < 2:
        return InvalidLine(line=number, reason="no password field")
    login, password = fields[0], fields[1]
    if not login:
        return InvalidLine(line=number, reason="empty user name")
    if not password:
        return InvalidLine(line=number, reason="empty password field")
    if password.startswith("{"):
        if not is_verifiable(password):
            return InvalidLine(line=number, reason="unsupported password scheme")
        return PasswdEntry(line=number, login=login, stored_password=password)
    for prefix, scheme in _CRYPT_PREFIXES:
        if password.startswith(prefix):
            stored = f"{{{scheme}}}{password}"
            return PasswdEntry(line=number, login=login, stored_password=stored)
    return InvalidLine(line=number, reason="unsupported crypt format without {SCHEME} prefix")
