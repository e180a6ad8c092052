"""Real servers for integration tests: in a thread of this process, or as a
``mailslot serve`` subprocess (for memory measurements and signals)."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from mailslot.auth import Account
from mailslot.config import Settings, load_settings
from mailslot.server.app import MailslotServer, open_store, open_user_db
from tests.helpers.loop_thread import LoopThread

# Cheap argon2 parameters keep hundreds of logins fast in tests.
FAST_HASH = {"auth.argon2_time_cost": 1, "auth.argon2_memory_kib": 8}
# Most tests speak plaintext POP3 on loopback; the TLS tests turn this off.
PLAINTEXT = {"auth.plaintext_without_tls": True}
CONFIG_DEFAULTS: dict[str, object] = {
    "server.log_level": "info",
    "server.allow_root": True,  # CI runs as root
    "pop3.listen": ["127.0.0.1:0"],
    **FAST_HASH,
    **PLAINTEXT,
}


def make_settings(data_dir: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "server.data_dir": str(data_dir),
        "pop3.listen": ["127.0.0.1:0"],
        "server.hostname": "test.invalid",
        **FAST_HASH,
        **PLAINTEXT,
    }
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    return load_settings(None, values)


def add_user(
    settings: Settings, name: str, password: str, *, store_secret: bool = False
) -> Account:
    with open_user_db(settings) as users:
        return users.add(name, password, store_secret=store_secret)


def deliver(settings: Settings, name: str, message: bytes) -> str:
    user, _, domain = name.partition("@")
    return open_store(settings).deliver(
        user, domain or settings.default_domain, io.BytesIO(message)
    )


@dataclass
class ThreadServer(LoopThread):
    """A ``MailslotServer`` running on its own event loop in a thread."""

    settings: Settings
    address: tuple[str, int] = ("", 0)
    addresses: dict[str, tuple[str, int]] = field(default_factory=dict)
    server: MailslotServer | None = None

    async def _main(self) -> None:
        self.server = MailslotServer(self.settings)
        listeners = await self.server.start()
        for listener in listeners:
            self.addresses.setdefault(
                listener.protocol, (listener.address.host, listener.address.port)
            )
        self.address = self.addresses["pop3"]
        self._ready.set()
        await self.server.serve_until_stopped()

    def stop(self) -> None:
        if self._loop is not None and self.server is not None and self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.server.stop)
            self._thread.join(30)

    def connect(self, timeout: float = 10) -> socket.socket:
        return socket.create_connection(self.address, timeout=timeout)


@contextlib.contextmanager
def running(settings: Settings) -> Iterator[ThreadServer]:
    server = ThreadServer(settings).start()
    try:
        yield server
    finally:
        server.stop()


class ProcessServer:
    """``python -m mailslot serve -c CONFIG`` in a subprocess."""

    def __init__(self, config: Path, *extra: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mailslot", "serve", "-c", str(config), *extra],
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        self.addresses: dict[str, tuple[str, int]] = {}
        assert self.proc.stderr is not None
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            line = self.proc.stderr.readline()
            if not line:
                raise RuntimeError("server exited: " + "".join(self.lines))
            self.lines.append(line)
            match = re.search(r"(\w+) listening on (\S+):(\d+)", line)
            if match:
                self.addresses.setdefault(match.group(1), (match.group(2), int(match.group(3))))
            if "ready" in line:
                break
        else:
            raise RuntimeError("server did not start")
        self.address = self.addresses["pop3"]
        self._drain = threading.Thread(target=self._read_stderr, daemon=True)
        self._drain.start()

    def _read_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    def rss_kib(self, field: str = "VmRSS") -> int:
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        match = re.search(rf"^{field}:\s+(\d+) kB", status, re.MULTILINE)
        assert match
        return int(match.group(1))

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._drain.join(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        return self.proc.returncode


def free_port() -> int:
    """A loopback port free now (for programs that need one in advance)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def write_config(data_dir: Path, **overrides: object) -> Path:
    """A config file for ``mailslot serve``; keys as in ``make_settings``."""
    values = {"server.data_dir": str(data_dir), **CONFIG_DEFAULTS}
    values.update({k.replace("__", "."): v for k, v in overrides.items()})
    sections: dict[str, list[str]] = {}
    for key, value in values.items():
        section, name = key.split(".", 1)
        sections.setdefault(section, []).append(f"{name} = {_toml(value)}")
    data_dir.mkdir(parents=True, exist_ok=True)
    config = data_dir / "config.toml"
    config.write_text(
        "".join(f"[{s}]\n" + "\n".join(lines) + "\n" for s, lines in sections.items())
    )
    return config


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    raise TypeError(value)


def cli(
    *args: str, stdin: bytes = b"", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "mailslot", *args],
        input=stdin,
        capture_output=True,
        timeout=120,
        env={**os.environ, **(env or {})},
        check=False,
    )
