"""Configuration: a TOML file (and command-line overrides) → frozen, validated
``Settings``.

Every setting is declared once, as a field of ``Settings`` whose metadata
names its TOML key (``section.key``) and its parser.  The loader walks those
fields, so the key list, the validation and the docs cannot drift apart.
Unknown keys and bad values raise ``ConfigError`` naming the key; the CLI
turns that into exit code 2.

Relative paths are relative to the data directory; the data directory itself
is relative to the config file's directory (or the working directory when
there is no file).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import socket
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_MAIL_LOCATION = "{data_dir}/mail/{domain}/{user}/Maildir"
DEFAULT_DATA_DIR = "mailslot-data"

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


class ConfigError(Exception):
    """A bad configuration; ``key`` is the dotted TOML key."""

    def __init__(self, key: str, message: str) -> None:
        super().__init__(f"{key}: {message}" if key else message)
        self.key = key


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# ---------------------------------------------------------------- parsers


def parse_address(value: str) -> Address:
    """``host:port``, ``[v6]:port`` or ``:port`` (all addresses)."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not port_text.isdigit():
        raise ValueError(f"expected host:port, got {value!r}")
    port = int(port_text)
    if not 0 <= port <= 65535:
        raise ValueError(f"port out of range in {value!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return Address(host or "0.0.0.0", port)  # noqa: S104 (explicitly asked for)


def _addresses(value: object) -> tuple[Address, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('expected a list of "host:port" strings')
    return tuple(parse_address(v) for v in value)


def _networks(value: object) -> tuple[IPNetwork, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError('expected a list of networks such as "10.0.0.0/8"')
    return tuple(ipaddress.ip_network(v, strict=False) for v in value)


def _int(low: int, high: int | None = None) -> Callable[[object], int]:
    def parse(value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("expected an integer")
        if value < low or (high is not None and value > high):
            bound = f"between {low} and {high}" if high is not None else f">= {low}"
            raise ValueError(f"must be {bound}")
        return value

    return parse


def _seconds(low: float) -> Callable[[object], float]:
    def parse(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError("expected a number of seconds")
        if value < low:
            raise ValueError(f"must be >= {low}")
        return float(value)

    return parse


def _str(value: object) -> str:
    if not isinstance(value, str):
        raise ValueError("expected a string")
    return value


def _expire(value: object) -> str:
    """RFC 2449 §6.7: ``never`` or a number of days."""
    if isinstance(value, str) and value.lower() == "never":
        return "NEVER"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    raise ValueError('expected "never" or a number of days')


def _log_level(value: object) -> str:
    levels = ("debug", "info", "warning", "error")
    if not isinstance(value, str) or value.lower() not in levels:
        raise ValueError(f"expected one of {', '.join(levels)}")
    return value.lower()


def _domain(value: object) -> str:
    text = _str(value).strip().lower()
    if not text or any(c in text for c in "/\\ @+") or text.startswith("."):
        raise ValueError("expected a domain name")
    return text


def _location(value: object) -> str:
    text = _str(value)
    if "{user}" not in text:
        raise ValueError("the mail location must contain {user}")
    return text


def _bool(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError("expected true or false")
    return value


def _optional_str(value: object) -> str | None:
    text = _str(value)
    return text or None


def _file_mode(value: object) -> int:
    text = _str(value)
    if not text or any(c not in "01234567" for c in text) or int(text, 8) > 0o777:
        raise ValueError('expected an octal file mode such as "0660"')
    return int(text, 8)


def _tls_version(value: object) -> str:
    versions = ("TLSv1.2", "TLSv1.3")
    if value not in versions:
        raise ValueError(f"expected one of {', '.join(versions)}")
    return str(value)


SASL_MECHANISMS = (
    "GSSAPI",
    "SCRAM-SHA-256",
    "SCRAM-SHA-1",
    "OAUTHBEARER",
    "XOAUTH2",
    "PLAIN",
    "LOGIN",
    "CRAM-MD5",
)
OAUTH_MECHANISMS = ("OAUTHBEARER", "XOAUTH2")


def _mechanisms(value: object) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError("expected a list of SASL mechanism names")
    names = tuple(v.upper() for v in value)
    unknown = [n for n in names if n not in SASL_MECHANISMS]
    if unknown:
        raise ValueError(f"unknown mechanism {unknown[0]!r}; known: {', '.join(SASL_MECHANISMS)}")
    return names


def _opt(key: str, default: Any, parse: Callable[[Any], Any], doc: str) -> Any:
    return field(default=default, metadata={"key": key, "parse": parse, "doc": doc})


# ---------------------------------------------------------------- settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    """Everything mailslot reads from its config.  See README "Configuration"."""

    data_dir: Path = _opt("server.data_dir", Path(DEFAULT_DATA_DIR), _str, "data directory")
    hostname: str = _opt("server.hostname", "", _str, "name in greetings (default: FQDN)")
    max_connections: int = _opt("server.max_connections", 1000, _int(1), "all listeners")
    log_level: str = _opt("server.log_level", "info", _log_level, "debug|info|warning|error")
    shutdown_grace: float = _opt(
        "server.shutdown_grace", 10.0, _seconds(0), "seconds sessions get to end on SIGTERM"
    )
    max_connections_per_ip: int = _opt(
        "server.max_connections_per_ip", 100, _int(1), "connections from one address"
    )
    run_user: str | None = _opt(
        "server.user", None, _optional_str, "user to switch to after binding (when root)"
    )
    run_group: str | None = _opt("server.group", None, _optional_str, "group to switch to")
    allow_root: bool = _opt("server.allow_root", False, _bool, "serve as root (not advised)")
    proxy_networks: tuple[IPNetwork, ...] = _opt(
        "server.proxy_networks",
        (),
        _networks,
        "load balancers whose connections start with a PROXY protocol header",
    )
    proxy_timeout: float = _opt(
        "server.proxy_timeout", 5.0, _seconds(0.1), "seconds a balancer gets to send the header"
    )
    pop3_listen: tuple[Address, ...] = _opt(
        "pop3.listen", (Address("127.0.0.1", 110),), _addresses, "POP3 (plain/STLS) listeners"
    )
    pop3s_listen: tuple[Address, ...] = _opt(
        "pop3s.listen", (), _addresses, "POP3S (implicit TLS) listeners"
    )
    metrics_listen: tuple[Address, ...] = _opt(
        "metrics.listen", (), _addresses, "Prometheus /metrics listeners (HTTP)"
    )
    autologout: float = _opt(
        "pop3.autologout", 600.0, _seconds(1), "idle seconds before disconnect (RFC: >= 600)"
    )
    expire: str = _opt("pop3.expire", "NEVER", _expire, "EXPIRE capability")
    login_delay: int = _opt("pop3.login_delay", 0, _int(0), "LOGIN-DELAY seconds; 0 = off")
    max_bad_commands: int = _opt("pop3.max_bad_commands", 20, _int(1), "bad commands in a row")
    max_auth_failures: int = _opt("pop3.max_auth_failures", 3, _int(1), "per connection")
    implementation: str = _opt("pop3.implementation", "mailslot", _str, "IMPLEMENTATION")
    lmtp_listen: tuple[Address, ...] = _opt(
        "lmtp.listen", (), _addresses, "LMTP (delivery) TCP listeners"
    )
    lmtp_socket: str | None = _opt("lmtp.socket", None, _optional_str, "LMTP unix socket path")
    lmtp_socket_mode: int = _opt("lmtp.socket_mode", 0o660, _file_mode, 'octal, e.g. "0660"')
    lmtp_socket_group: str | None = _opt(
        "lmtp.socket_group", None, _optional_str, "group of the socket (e.g. postfix)"
    )
    lmtp_max_message_size: int = _opt(
        "lmtp.max_message_size", 50 * 1024 * 1024, _int(1024), "octets (SIZE)"
    )
    lmtp_max_recipients: int = _opt("lmtp.max_recipients", 100, _int(1), "per message")
    lmtp_max_connections: int = _opt("lmtp.max_connections", 100, _int(1), "LMTP connections")
    mail_location: str = _opt(
        "storage.mail_location", DEFAULT_MAIL_LOCATION, _location, "Maildir path template"
    )
    lock_file: str | None = _opt(
        "storage.lock_file",
        None,
        _optional_str,
        "maildrop locks (default: mailslot.locks below the location's fixed part)",
    )
    tls_cert: str | None = _opt("tls.cert", None, _optional_str, "certificate chain (PEM)")
    tls_key: str | None = _opt("tls.key", None, _optional_str, "private key (PEM)")
    tls_min_version: str = _opt("tls.min_version", "TLSv1.2", _tls_version, "oldest TLS")
    tls_handshake_timeout: float = _opt(
        "tls.handshake_timeout", 30.0, _seconds(1), "seconds to finish a TLS handshake"
    )
    user_db: str = _opt("auth.database", "users.sqlite3", _str, "SQLite user database")
    plaintext_without_tls: bool = _opt(
        "auth.plaintext_without_tls", False, _bool, "USER/PASS, PLAIN, LOGIN before TLS"
    )
    plaintext_on_loopback: bool = _opt(
        "auth.plaintext_on_loopback", False, _bool, "treat loopback clients as secure"
    )
    mechanisms: tuple[str, ...] = _opt(
        "auth.mechanisms",
        ("SCRAM-SHA-256", "SCRAM-SHA-1", "PLAIN", "LOGIN"),
        _mechanisms,
        "SASL mechanisms offered",
    )
    gssapi_keytab: str | None = _opt(
        "auth.gssapi_keytab", None, _optional_str, "Kerberos keytab for the GSSAPI mechanism"
    )
    oauth_key: str | None = _opt(
        "auth.oauth_key", None, _optional_str, "issuer's public key (PEM) or JWKS for OAuth"
    )
    oauth_issuer: str = _opt("auth.oauth_issuer", "", _str, "the tokens' iss")
    oauth_audience: str = _opt("auth.oauth_audience", "", _str, "the tokens' aud")
    oauth_username_claim: str = _opt(
        "auth.oauth_username_claim", "email", _str, "claim holding the login name"
    )
    apop: bool = _opt("auth.apop", False, _bool, "offer APOP (needs stored secrets; MD5)")
    store_secrets: bool = _opt(
        "auth.store_secrets", False, _bool, "keep recoverable secrets for APOP/CRAM-MD5"
    )
    rehash: bool = _opt("auth.rehash", True, _bool, "upgrade old hashes to argon2id on login")
    cache_ttl: float = _opt(
        "auth.cache_ttl", 0.0, _seconds(0), "seconds a verified login is remembered; 0 = off"
    )
    penalty_max_delay: float = _opt(
        "auth.penalty_max_delay", 15.0, _seconds(0), "longest delay after failed logins"
    )
    penalty_block_after: int = _opt(
        "auth.penalty_block_after", 20, _int(1), "failures from one address before refusal"
    )
    penalty_window: float = _opt(
        "auth.penalty_window", 900.0, _seconds(1), "seconds failures are remembered"
    )
    default_domain: str = _opt("auth.default_domain", "localhost", _domain, "for bare logins")
    argon2_time_cost: int = _opt("auth.argon2_time_cost", 3, _int(1), "argon2id passes")
    argon2_memory_kib: int = _opt("auth.argon2_memory_kib", 65536, _int(8), "argon2id memory")
    auth_workers: int = _opt("auth.workers", 2, _int(1, 64), "password-hashing threads")

    @property
    def user_db_path(self) -> Path:
        return self.data_dir / self.user_db

    @property
    def gssapi_keytab_path(self) -> str | None:
        """``auth.gssapi_keytab`` relative to the data directory."""
        return None if self.gssapi_keytab is None else str(self.data_path(self.gssapi_keytab))

    @property
    def tls_enabled(self) -> bool:
        return self.tls_cert is not None

    def data_path(self, path: str) -> Path:
        """``path`` relative to the data directory (absolute paths unchanged)."""
        return self.data_dir / path

    @property
    def mail_template(self) -> str:
        """The mail location with ``{data_dir}`` filled in."""
        return self.mail_location.replace("{data_dir}", str(self.data_dir))

    @property
    def lock_path(self) -> str | None:
        """``storage.lock_file`` with ``{data_dir}`` filled in, relative to it."""
        if self.lock_file is None:
            return None
        return str(self.data_path(self.lock_file.replace("{data_dir}", str(self.data_dir))))

    @property
    def greeting_hostname(self) -> str:
        return self.hostname or socket.getfqdn()


def setting_keys() -> dict[str, str]:
    """TOML key → description, for docs and error messages."""
    return {f.metadata["key"]: f.metadata["doc"] for f in dataclasses.fields(Settings)}


def load_settings(
    path: str | Path | None = None, overrides: Mapping[str, object] | None = None
) -> Settings:
    """Read ``path`` (if any), apply ``overrides`` (dotted keys), validate."""
    raw: dict[str, object] = {}
    base = Path.cwd()
    if path is not None:
        path = Path(path)
        try:
            with path.open("rb") as stream:
                document = tomllib.load(stream)
        except FileNotFoundError:
            raise ConfigError("", f"config file not found: {path}") from None
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError("", f"cannot read {path}: {exc}") from None
        raw = _flatten(document)
        base = path.resolve().parent
    raw.update(overrides or {})

    fields = {f.metadata["key"]: f for f in dataclasses.fields(Settings)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(unknown[0], "unknown setting")
    values: dict[str, Any] = {}
    for key, value in raw.items():
        f = fields[key]
        try:
            values[f.name] = f.metadata["parse"](value)
        except ValueError as exc:
            raise ConfigError(key, str(exc)) from None
    data_dir = Path(values.get("data_dir", DEFAULT_DATA_DIR))
    values["data_dir"] = (base / data_dir).resolve()
    settings = Settings(**values)
    if (settings.tls_cert is None) != (settings.tls_key is None):
        raise ConfigError("tls.key" if settings.tls_key is None else "tls.cert", "set both")
    if settings.pop3s_listen and not settings.tls_enabled:
        raise ConfigError("pop3s.listen", "needs tls.cert and tls.key")
    if "CRAM-MD5" in settings.mechanisms and not settings.store_secrets:
        raise ConfigError("auth.mechanisms", "CRAM-MD5 needs auth.store_secrets = true")
    if settings.apop and not settings.store_secrets:
        raise ConfigError("auth.apop", "APOP needs auth.store_secrets = true")
    if "GSSAPI" in settings.mechanisms and settings.gssapi_keytab is None:
        raise ConfigError("auth.mechanisms", "GSSAPI needs auth.gssapi_keytab")
    if any(m in settings.mechanisms for m in OAUTH_MECHANISMS):
        for key, value in (
            ("auth.oauth_key", settings.oauth_key),
            ("auth.oauth_issuer", settings.oauth_issuer),
            ("auth.oauth_audience", settings.oauth_audience),
        ):
            if not value:
                raise ConfigError(key, "OAUTHBEARER and XOAUTH2 need it set")
    return settings


def _flatten(document: Mapping[str, object]) -> dict[str, object]:
    flat: dict[str, object] = {}
    for section, table in document.items():
        if not isinstance(table, dict):
            raise ConfigError(section, "expected a [section] table")
        for key, value in table.items():
            flat[f"{section}.{key}"] = value
    return flat
