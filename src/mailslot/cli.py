"""The ``mailslot`` command.

Exit codes: 0 success, 1 operational failure, 2 bad usage or bad config;
``deliver`` follows sendmail's sysexits: 67 (no such user), 75 (temporary
failure, retry later).
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import grp
import logging
import os
import pwd
import secrets
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from mailslot import __version__
from mailslot.auth import UserDB, UserRecord
from mailslot.config import DEFAULT_DATA_DIR, ConfigError, Settings, load_settings
from mailslot.logfmt import printable

EX_OK = 0
EX_FAIL = 1
EX_USAGE = 2
EX_NOUSER = 67  # sysexits.h
EX_TEMPFAIL = 75  # sysexits.h

QUICKSTART_POP3 = "127.0.0.1:1110"
QUICKSTART_POP3S = "127.0.0.1:1995"
QUICKSTART_LMTP = "127.0.0.1:2424"
DEMO_USER = "demo"

log = logging.getLogger("mailslot")


class CliError(Exception):
    def __init__(self, message: str, code: int = EX_FAIL) -> None:
        super().__init__(message)
        self.code = code


# ---------------------------------------------------------------- helpers


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, object] = {}
    if getattr(args, "data", None):
        overrides["server.data_dir"] = str(Path(args.data).resolve())
    listeners = (("pop3", "pop3.listen"), ("pop3s", "pop3s.listen"), ("lmtp", "lmtp.listen"))
    for flag, key in listeners:
        if getattr(args, flag, None):
            overrides[key] = list(getattr(args, flag))
    for flag, key in (("tls_cert", "tls.cert"), ("tls_key", "tls.key")):
        if getattr(args, flag, None):
            overrides[key] = str(Path(getattr(args, flag)).resolve())
    if getattr(args, "log_level", None):
        overrides["server.log_level"] = args.log_level
    if getattr(args, "allow_root", False):
        overrides["server.allow_root"] = True
    if getattr(args, "user", None):
        overrides["server.user"] = args.user
    config = getattr(args, "config", None)
    if config is None and not overrides.get("server.data_dir"):
        raise CliError("give a config file (-c CONFIG) or a data directory (--data DIR)", EX_USAGE)
    try:
        return load_settings(config, overrides)
    except ConfigError as exc:
        raise CliError(f"config error: {exc}", EX_USAGE) from None


def _setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper()),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def _read_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif sys.stdin.isatty():
        password = getpass.getpass("Password: ")
        if getpass.getpass("Again: ") != password:
            raise CliError("passwords do not match")
    else:
        raise CliError("no terminal to prompt on: use --password-stdin", EX_USAGE)
    if not password:
        raise CliError("empty password refused", EX_USAGE)
    if "\x00" in password:
        raise CliError("a password cannot contain NUL", EX_USAGE)
    return password


def _run(coro: Coroutine[Any, Any, None]) -> None:
    try:
        import uvloop  # noqa: PLC0415 (optional accelerator)
    except ImportError:
        asyncio.run(coro)
    else:
        uvloop.run(coro)


# ---------------------------------------------------------------- serve


def _check_root(settings: Settings) -> None:
    if os.geteuid() == 0 and settings.run_user is None and not settings.allow_root:
        raise CliError(
            "refusing to serve as root: set server.user (switched to after binding) "
            "or server.allow_root = true",
            EX_USAGE,
        )


def _hand_over_data(settings: Settings, uid: int, gid: int) -> None:
    """Give the data directory and the user database (created by root's
    ``mailslot user add``) to the user the server becomes: it opens more
    database connections, and creates maildirs, after the switch."""
    db = str(settings.user_db_path)
    for path in (str(settings.data_dir), db, db + "-wal", db + "-shm"):
        try:
            if os.stat(path).st_uid == 0:
                os.chown(path, uid, gid)
                log.info("handed %s to uid %d", path, uid)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise CliError(f"cannot hand {path} to server.user: {exc.strerror}") from None


def _drop_privileges(settings: Settings) -> None:
    """After binding privileged ports, become ``server.user``."""
    if os.geteuid() != 0 or settings.run_user is None:
        return
    try:
        account = pwd.getpwnam(settings.run_user)
        gid = grp.getgrnam(settings.run_group).gr_gid if settings.run_group else account.pw_gid
    except KeyError as exc:
        raise CliError(f"server.user/group: no such user or group: {exc}", EX_USAGE) from None
    _hand_over_data(settings, account.pw_uid, gid)
    os.setgroups([])
    os.setgid(gid)
    os.setuid(account.pw_uid)
    log.info("running as %s (uid %d, gid %d)", settings.run_user, account.pw_uid, gid)


async def _serve(settings: Settings, *, ready: Callable[[], None] | None = None) -> None:
    from mailslot.server.app import MailslotServer  # noqa: PLC0415 (keeps `user` fast)
    from mailslot.server.tls import TlsConfigError  # noqa: PLC0415

    _check_root(settings)
    try:
        server = MailslotServer(settings)
    except TlsConfigError as exc:
        raise CliError(f"TLS: {exc}", EX_USAGE) from None
    except (ValueError, ConfigError) as exc:
        raise CliError(f"config error: {exc}", EX_USAGE) from None
    try:
        listeners = await server.start()
    except OSError as exc:
        raise CliError(f"cannot listen: {exc}") from None
    except ConfigError as exc:
        raise CliError(f"config error: {exc}", EX_USAGE) from None
    _drop_privileges(settings)
    try:
        server.prepare_storage()
    except ConfigError as exc:
        raise CliError(f"config error: {exc}", EX_USAGE) from None
    server.install_signal_handlers()
    for listener in listeners:
        print(f"mailslot: {listener.protocol} listening on {listener.address}", file=sys.stderr)
    print("mailslot: ready", file=sys.stderr, flush=True)
    if ready is not None:
        ready()
    await server.serve_until_stopped()


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _setup_logging(settings.log_level)
    _run(_serve(settings))
    return EX_OK


def cmd_check_config(args: argparse.Namespace) -> int:
    from mailslot.server.app import (  # noqa: PLC0415
        bearer_verifier,
        gss_contexts,
        open_store,
        prepare_lock_file,
        tls_files,
    )
    from mailslot.server.tls import TlsConfigError, server_context  # noqa: PLC0415

    settings = _settings(args)
    try:
        store = open_store(settings)
    except ValueError as exc:
        raise CliError(f"config error: storage.mail_location: {exc}", EX_USAGE) from None
    try:
        prepare_lock_file(store)
    except ConfigError as exc:
        raise CliError(f"config error: {exc}", EX_USAGE) from None
    files = tls_files(settings)
    if files is not None:
        try:
            server_context(files, min_version=settings.tls_min_version)
        except TlsConfigError as exc:
            raise CliError(f"config error: tls: {exc}", EX_USAGE) from None
    try:
        gss_contexts(settings)
        bearer_verifier(settings)
    except ConfigError as exc:
        raise CliError(f"config error: {exc}", EX_USAGE) from None
    print(f"config OK: data directory {settings.data_dir}")
    for address in settings.pop3_listen:
        print(f"  pop3 listen {address}")
    for address in settings.pop3s_listen:
        print(f"  pop3s listen {address}")
    if settings.proxy_networks:
        networks = ", ".join(map(str, settings.proxy_networks))
        print(f"  PROXY protocol required from {networks}")
    for address in settings.lmtp_listen:
        print(f"  lmtp listen {address}")
    for address in settings.metrics_listen:
        print(f"  metrics listen {address}")
    if settings.lmtp_socket:
        print(f"  lmtp socket {settings.data_path(settings.lmtp_socket)}")
    if settings.gssapi_keytab_path is not None:
        print(f"  GSSAPI keytab {settings.gssapi_keytab_path}")
    print(f"  mail location {settings.mail_template}")
    print(f"  maildrop locks {store.locks.path}")
    print(f"  user database {settings.user_db_path}")
    return EX_OK


# ---------------------------------------------------------------- quickstart

QUICKSTART_CONFIG = """\
# mailslot configuration, made by `mailslot quickstart`.
# Every setting is described in the README ("Configuration").

[server]
data_dir = "."
{root}
[pop3]
listen = ["{pop3}"]

[pop3s]
listen = ["{pop3s}"]

[lmtp]
listen = ["{lmtp}"]

[tls]
cert = "tls/cert.pem"
key = "tls/key.pem"

[auth]
default_domain = "localhost"
"""

WELCOME = """\
From: mailslot <postmaster@localhost>
To: {user}@localhost
Subject: Welcome to mailslot
Date: {date}
Message-ID: <welcome.{token}@localhost>
MIME-Version: 1.0
Content-Type: text/plain; charset=utf-8
Content-Transfer-Encoding: 8bit

Hello!

This message sits in a Maildir on disk, served to you by mailslot over POP3.
Deliver more with:

    mailslot deliver -c {config} {user} < message.eml

or over LMTP on {lmtp} (point your MTA's local delivery at it).

Добро пожаловать! (8-bit text passes through untouched.)
"""


def cmd_quickstart(args: argparse.Namespace) -> int:
    from email.utils import formatdate  # noqa: PLC0415

    from mailslot.auth import UserExists  # noqa: PLC0415
    from mailslot.server.app import open_store, open_user_db  # noqa: PLC0415
    from mailslot.server.tls import fingerprint, make_self_signed  # noqa: PLC0415

    root = Path(args.dir).resolve()
    config = root / "config.toml"
    created = not config.exists()
    if created:
        root.mkdir(parents=True, exist_ok=True)
        # A demo on loopback ports; as root, say so explicitly.
        as_root = "allow_root = true  # quickstart was run as root\n" if os.geteuid() == 0 else ""
        config.write_text(
            QUICKSTART_CONFIG.format(
                pop3=args.pop3 or QUICKSTART_POP3,
                pop3s=args.pop3s or QUICKSTART_POP3S,
                lmtp=args.lmtp or QUICKSTART_LMTP,
                root=as_root,
            ),
            encoding="utf-8",
        )
    cert, key = root / "tls" / "cert.pem", root / "tls" / "key.pem"
    if not cert.exists() or not key.exists():
        cert.parent.mkdir(mode=0o700, exist_ok=True)
        make_self_signed(cert, key, hostnames=["localhost", "127.0.0.1", "::1"])
    args.config = str(config)
    args.pop3 = [args.pop3] if args.pop3 else None
    args.pop3s = [args.pop3s] if args.pop3s else None
    args.lmtp = [args.lmtp] if args.lmtp else None
    settings = _settings(args)
    password = None
    with open_user_db(settings) as users:
        if users.get(DEMO_USER) is None:
            password = secrets.token_urlsafe(12)
            try:
                users.add(DEMO_USER, password)
            except UserExists:  # pragma: no cover - raced with another quickstart
                password = None
            else:
                welcome = WELCOME.format(
                    lmtp=settings.lmtp_listen[0] if settings.lmtp_listen else "-",
                    user=DEMO_USER,
                    date=formatdate(localtime=True),
                    token=secrets.token_hex(8),
                    config=config,
                )
                store = open_store(settings)
                with tempfile.TemporaryFile() as spool:
                    spool.write(welcome.replace("\n", "\r\n").encode("utf-8"))
                    spool.seek(0)
                    store.deliver(DEMO_USER, settings.default_domain, spool)
    address = settings.pop3_listen[0]
    print(f"mailslot {__version__} quickstart in {root}")
    print(f"  config:   {config}")
    print(f"  TLS:      {cert} (self-signed, SHA-256 {fingerprint(cert)})")
    for lmtp in settings.lmtp_listen:
        print(f"  LMTP:     {lmtp} (point your MTA's delivery here)")
    if password is not None:
        print(f"  user:     {DEMO_USER}   password: {password}   (shown once; keep it)")
    else:
        print(f"  user:     {DEMO_USER}   (existing; reset the password with:")
        print(f"            mailslot user passwd -c {config} {DEMO_USER})")
    secret = password if password is not None else "PASSWORD"
    tls_address = settings.pop3s_listen[0] if settings.pop3s_listen else address
    print("Fetch the welcome message:")
    print(f"  curl --cacert {cert} -u {DEMO_USER}:{secret} pop3s://{tls_address}/1")
    print(f"  curl --ssl-reqd --cacert {cert} -u {DEMO_USER}:{secret} pop3://{address}/1")
    print("Stop with Ctrl-C.")
    sys.stdout.flush()
    _setup_logging(settings.log_level)
    _run(_serve(settings))
    return EX_OK


# ---------------------------------------------------------------- users


def cmd_user(args: argparse.Namespace) -> int:
    from mailslot.auth import InvalidName, NoSuchUser, UserExists  # noqa: PLC0415
    from mailslot.server.app import open_user_db  # noqa: PLC0415

    settings = _settings(args)
    secret = settings.store_secrets
    try:
        with open_user_db(settings) as users:
            if args.action == "add":
                account = users.add(args.name, _read_password(args), store_secret=secret)
                print(f"added {account.name}")
            elif args.action == "passwd":
                users.set_password(args.name, _read_password(args), store_secret=secret)
                print("password changed")
            elif args.action == "del":
                users.delete(args.name)
                print("deleted (the maildrop is left on disk)")
            elif args.action == "quota":
                users.set_quota(args.name, messages=args.messages, bytes_=args.bytes)
                print("quota set")
            elif args.action == "import":
                return _import_users(users, args)
            else:
                _list_users(users.list())
    except UserExists:
        raise CliError("user already exists") from None
    except NoSuchUser:
        raise CliError("no such user", EX_NOUSER) from None
    except InvalidName as exc:
        raise CliError(f"invalid user name: {exc}", EX_USAGE) from None
    return EX_OK


def _list_users(records: Sequence[UserRecord]) -> None:
    def quota(value: int | None) -> str:
        return "-" if value is None else str(value)

    for record in records:
        mechanisms = "scram" if record.has_scram else "-"
        if record.has_secret:
            mechanisms += ",secret"
        print(
            f"{record.account.name}\tquota={quota(record.quota_messages)}/"
            f"{quota(record.quota_bytes)}\tcredentials={mechanisms}"
        )


def _import_users(users: UserDB, args: argparse.Namespace) -> int:
    from mailslot.auth.passwdfile import import_passwd_file  # noqa: PLC0415

    try:
        report = import_passwd_file(
            users, args.passwd_file, dry_run=args.dry_run, domain=args.domain
        )
    except OSError as exc:
        raise CliError(f"cannot read {args.passwd_file}: {exc.strerror}") from None
    verb = "would import" if report.dry_run else "imported"
    print(f"{verb} {report.imported} users; {report.skipped_existing} already existed")
    for invalid in report.invalid:
        print(f"  line {invalid.line}: {invalid.reason}", file=sys.stderr)
    return EX_OK if not report.invalid else EX_FAIL


# ---------------------------------------------------------------- deliver


def cmd_deliver(args: argparse.Namespace) -> int:
    from mailslot.server.app import open_store, open_user_db  # noqa: PLC0415
    from mailslot.store import DeliveryError  # noqa: PLC0415

    settings = _settings(args)
    with open_user_db(settings) as users:
        accounts = [_record(users, name).account for name in args.users]
    store = open_store(settings)
    source: BinaryIO = sys.stdin.buffer
    try:
        with tempfile.TemporaryFile() as spool:
            while chunk := source.read(1 << 20):
                spool.write(chunk)
            for account in accounts:
                spool.seek(0)
                store.deliver(account.user, account.domain, spool)
    except DeliveryError as exc:
        code = EX_TEMPFAIL if exc.temporary else EX_FAIL
        raise CliError(f"delivery failed: {exc}", code) from None
    except OSError as exc:
        raise CliError(f"delivery failed: {exc}", EX_TEMPFAIL) from None
    return EX_OK


def _safe(text: str) -> str:
    return printable(text)[:100]


def _record(users: UserDB, name: str, hint: str = "") -> UserRecord:
    """The account ``name`` names, or exit 67 (no such user)."""
    from mailslot.auth import InvalidName  # noqa: PLC0415

    try:
        record = users.get(name)
    except InvalidName:
        record = None
    if record is None:
        raise CliError(f"no such user: {_safe(name)}{hint}", EX_NOUSER)
    return record


# ---------------------------------------------------------------- expire


def cmd_expire(args: argparse.Namespace) -> int:
    from mailslot.server.app import open_store, open_user_db  # noqa: PLC0415
    from mailslot.store import MaildropBusy, MaildropError  # noqa: PLC0415

    settings = _settings(args)
    days = args.days
    if days is None:
        if settings.expire == "NEVER":
            raise CliError("pop3.expire is never: nothing expires (or give --days N)", EX_USAGE)
        days = int(settings.expire)
    with open_user_db(settings) as users:
        if args.users:
            accounts = [_record(users, name).account for name in args.users]
        else:
            accounts = [record.account for record in users.list()]
    store = open_store(settings)
    cutoff = time.time() - days * 86400
    failed = False
    for account in accounts:
        try:
            with store.open(account.user, account.domain) as maildrop:
                old = maildrop.seen_before(cutoff)
                octets = sum(maildrop.messages[i].size for i in old)
                if old and not args.dry_run:
                    maildrop.commit(old)
        except MaildropBusy:
            print(f"{account.name}: in use, skipped (run again later)")
            continue
        except MaildropError as exc:
            print(f"{account.name}: {exc}", file=sys.stderr)
            failed = True
            continue
        if old:
            verb = "would remove" if args.dry_run else "removed"
            print(f"{account.name}: {verb} {len(old)} messages ({octets} octets)")
    return EX_FAIL if failed else EX_OK


# ---------------------------------------------------------------- import


def cmd_import(args: argparse.Namespace) -> int:
    from mailslot.server.app import open_store, open_user_db  # noqa: PLC0415
    from mailslot.store import migrate  # noqa: PLC0415

    settings = _settings(args)
    with open_user_db(settings) as users:
        account = _record(users, args.user, " (add it first)").account
    store = open_store(settings)
    target = Path(store.maildir_path(account.user, account.domain))
    source = Path(args.source)
    try:
        if args.source_format == "dovecot":
            report = migrate.import_dovecot_maildir(
                source,
                target,
                locks=store.locks,
                uidl_format=args.uidl_format,
                dry_run=args.dry_run,
                merge=args.merge,
            )
        elif args.source_format == "courier":
            report = migrate.import_courier_maildir(
                source, target, locks=store.locks, dry_run=args.dry_run, merge=args.merge
            )
        else:
            report = migrate.import_mbox(
                source, target, locks=store.locks, dry_run=args.dry_run, merge=args.merge
            )
    except migrate.MigrationError as exc:
        raise CliError(f"import failed: {exc}") from None
    except ValueError as exc:
        raise CliError(f"import failed: {exc}", EX_USAGE) from None
    verb = "would import" if args.dry_run else "imported"
    print(
        f"{verb} {report.messages} messages ({report.octets} octets) into {account.name}: "
        f"{report.uidls_kept} UIDLs kept, {report.uidls_new} new"
    )
    for note in report.skipped:
        print(f"  {note}")
    return EX_OK


# ---------------------------------------------------------------- parser


def _count(text: str) -> int:
    if not text.isdigit():
        raise argparse.ArgumentTypeError("expected a whole number >= 0")
    return int(text)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("-c", "--config", help="TOML config file")
    parser.add_argument("--data", metavar="DIR", help="data directory (overrides the config)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mailslot", description="A POP3 server on Maildir.")
    parser.add_argument("--version", action="version", version=f"mailslot {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("quickstart", help="create a working setup and serve it on loopback")
    p.add_argument(
        "--dir", default=DEFAULT_DATA_DIR, help=f"setup directory (./{DEFAULT_DATA_DIR})"
    )
    p.add_argument("--pop3", metavar="HOST:PORT", help=f"POP3 listener ({QUICKSTART_POP3})")
    p.add_argument("--pop3s", metavar="HOST:PORT", help=f"POP3S listener ({QUICKSTART_POP3S})")
    p.add_argument("--lmtp", metavar="HOST:PORT", help=f"LMTP listener ({QUICKSTART_LMTP})")
    p.set_defaults(func=cmd_quickstart, config=None, data=None)

    p = sub.add_parser("serve", help="serve POP3 in the foreground")
    _add_common(p)
    p.add_argument("--pop3", action="append", metavar="HOST:PORT", help="POP3 listener (repeat)")
    p.add_argument("--pop3s", action="append", metavar="HOST:PORT", help="POP3S listener (repeat)")
    p.add_argument("--lmtp", action="append", metavar="HOST:PORT", help="LMTP listener (repeat)")
    p.add_argument("--tls-cert", metavar="PEM", help="certificate chain")
    p.add_argument("--tls-key", metavar="PEM", help="private key")
    p.add_argument("--user", help="switch to this user after binding (when started as root)")
    p.add_argument("--allow-root", action="store_true", help="serve as root (not advised)")
    p.add_argument("--log-level", choices=["debug", "info", "warning", "error"])
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("check-config", help="validate the configuration")
    _add_common(p)
    p.set_defaults(func=cmd_check_config)

    p = sub.add_parser("user", help="manage users")
    users = p.add_subparsers(dest="action", required=True, metavar="ACTION")
    for action, text in (("add", "add a user"), ("passwd", "set a password"), ("del", "delete")):
        q = users.add_parser(action, help=text)
        _add_common(q)
        q.add_argument("name")
        if action != "del":
            q.add_argument(
                "--password-stdin", action="store_true", help="read the password from stdin"
            )
        q.set_defaults(func=cmd_user)
    q = users.add_parser("list", help="list users with quotas and stored credentials")
    _add_common(q)
    q.set_defaults(func=cmd_user)
    q = users.add_parser("quota", help="set or clear a user's quota")
    _add_common(q)
    q.add_argument("name")
    q.add_argument("--messages", type=_count, help="most messages (omit: unlimited)")
    q.add_argument("--bytes", type=_count, help="most octets (omit: unlimited)")
    q.set_defaults(func=cmd_user)
    q = users.add_parser("import", help="import users from a Dovecot passwd-file")
    _add_common(q)
    q.add_argument("--passwd-file", required=True, metavar="FILE")
    q.add_argument(
        "--domain", help="domain of names without @domain (default: auth.default_domain)"
    )
    q.add_argument("--dry-run", action="store_true", help="report what would be imported")
    q.set_defaults(func=cmd_user)

    p = sub.add_parser("import", help="import mail from Dovecot, Courier or mbox, keeping UIDLs")
    _add_common(p)
    p.add_argument(
        "--from", dest="source_format", required=True, choices=["dovecot", "courier", "mbox"]
    )
    p.add_argument(
        "--uidl-format",
        default="%08Xu%08Xv",
        help="Dovecot's pop3_uidl_format (default %%08Xu%%08Xv)",
    )
    p.add_argument("--dry-run", action="store_true", help="report what would be imported")
    p.add_argument("--merge", action="store_true", help="add to a maildrop that has mail")
    p.add_argument("source", help="the Maildir (dovecot, courier) or mbox file")
    p.add_argument("user", help="the mailslot account to import into")
    p.set_defaults(func=cmd_import)

    p = sub.add_parser(
        "expire", help="remove retrieved messages older than pop3.expire days (run daily)"
    )
    _add_common(p)
    p.add_argument("--days", type=_count, help="instead of pop3.expire")
    p.add_argument("--dry-run", action="store_true", help="count, remove nothing")
    p.add_argument("users", nargs="*", metavar="USER", help="default: every user")
    p.set_defaults(func=cmd_expire)

    p = sub.add_parser("deliver", help="deliver a message from stdin to users' maildrops")
    _add_common(p)
    p.add_argument("users", nargs="+", metavar="USER")
    p.set_defaults(func=cmd_deliver)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except CliError as exc:
        print(f"mailslot: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        return 130
    return code
