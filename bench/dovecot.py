#!/usr/bin/env python3
"""A private Dovecot instance for the benchmark.

Everything lives under ``<work>/dovecot``: its own ``base_dir`` (sockets,
``master.pid``), ``state_dir``, log file, passwd-file and TLS certificate.
It listens on 127.0.0.1 only, on its own ports, and serves the same Maildirs
mailslot serves.  The system Dovecot (``/etc/dovecot``), if any, is neither
read nor touched.  README.md "Dovecot settings" explains every setting.

Alone::

    python3 bench/dovecot.py install          # apt-get install if missing
    python3 bench/dovecot.py start --work /var/tmp/mailslot-bench
    python3 bench/dovecot.py stop --work /var/tmp/mailslot-bench
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PACKAGES = ("dovecot-core", "dovecot-pop3d")
POP3_PORT = 21110
POP3S_PORT = 21995
MAIL_USER = "vmail"  # owns the Maildirs; Dovecot's mail processes run as it
INTERNAL_USER = "dovecot"
LOGIN_USER = "dovenull"
FD_LIMIT = 65536


def dovecot_binary() -> str | None:
    return shutil.which("dovecot") or (
        "/usr/sbin/dovecot" if os.path.exists("/usr/sbin/dovecot") else None
    )


def doveadm_binary() -> str | None:
    return shutil.which("doveadm") or (
        "/usr/bin/doveadm" if os.path.exists("/usr/bin/doveadm") else None
    )


def version() -> str | None:
    binary = dovecot_binary()
    if binary is None:
        return None
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=True
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def pop3_available() -> bool:
    """dovecot-pop3d installs the pop3 and pop3-login binaries."""
    return any(Path(d, "pop3").exists() for d in ("/usr/lib/dovecot", "/usr/libexec/dovecot"))


def install() -> bool:
    """``apt-get install dovecot-core dovecot-pop3d`` if missing; True if usable."""
    if version() is not None and pop3_available():
        return True
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        return False
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    print("installing " + " ".join(PACKAGES) + " with apt-get", flush=True)
    for command in (
        ["apt-get", "update", "-q"],
        ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
    ):
        result = subprocess.run(command, env=env, check=False)
        if result.returncode != 0 and command[1] == "install":
            return False
    return version() is not None and pop3_available()


def ensure_system_user(name: str) -> None:
    """Create a system user (no home, no shell) if it does not exist."""
    import pwd  # noqa: PLC0415

    try:
        pwd.getpwnam(name)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", name],
            check=True,
        )


def strong_scheme() -> str:
    """ARGON2ID if this Dovecot can verify it, else SHA512-CRYPT."""
    doveadm = doveadm_binary()
    if doveadm is not None:
        result = subprocess.run(
            [doveadm, "-O", "pw", "-s", "ARGON2ID", "-p", "probe"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode == 0 and result.stdout.startswith("{ARGON2ID}"):
            return "ARGON2ID"
    return "SHA512-CRYPT"


def hash_password(scheme: str, password: str) -> str:
    doveadm = doveadm_binary()
    assert doveadm is not None
    result = subprocess.run(
        [doveadm, "-O", "pw", "-s", scheme, "-p", password],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed RSA-2048 certificate for 127.0.0.1/localhost (openssl)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / "cert.pem", directory / "key.pem"
    if not (cert.exists() and key.exists()):
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "3650",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=DNS:localhost,IP:127.0.0.1",
            ],
            check=True,
            capture_output=True,
        )
        key.chmod(0o600)
    return cert, key


@dataclass(frozen=True, slots=True)
class Instance:
    work: Path  # the benchmark's work directory

    @property
    def root(self) -> Path:
        return self.work / "dovecot"

    @property
    def conf(self) -> Path:
        return self.root / "dovecot.conf"

    @property
    def base_dir(self) -> Path:
        return self.root / "run"

    @property
    def state_dir(self) -> Path:
        return self.root / "state"

    @property
    def log(self) -> Path:
        return self.root / "dovecot.log"

    @property
    def passwd(self) -> Path:
        return self.root / "users"

    @property
    def mail_root(self) -> Path:
        return self.work / "mail"


def write_users(instance: Instance, users: Iterable[tuple[str, str]]) -> None:
    """passwd-file lines ``user@domain:{SCHEME}hash::::::`` (uid/gid come from the config)."""
    instance.root.mkdir(parents=True, exist_ok=True)
    lines = [f"{login}:{password}::::::\n" for login, password in users]
    tmp = instance.passwd.with_suffix(".tmp")
    tmp.write_text("".join(lines))
    tmp.chmod(0o640)
    if os.geteuid() == 0:
        # Dovecot's auth process runs as the internal user and reads this file.
        import grp  # noqa: PLC0415

        os.chown(tmp, 0, grp.getgrnam(INTERNAL_USER).gr_gid)
    os.replace(tmp, instance.passwd)


def config_text(
    instance: Instance, *, max_sessions: int, cert: Path, key: Path, pop3_service_count: int = 1
) -> str:
    import pwd  # noqa: PLC0415

    mail_uid = pwd.getpwnam(MAIL_USER).pw_uid
    limit = max_sessions + 1000
    # Only pop3 needs one process per session; every other service needs few.
    # Keeping the sum of process limits under RLIMIT_NPROC spares the master a
    # setrlimit(RLIMIT_NPROC) that needs CAP_SYS_RESOURCE.
    others = 1000
    # Dovecot's default is a fresh pop3 process per session (service_count = 1);
    # a larger value lets one process serve several sessions in turn.
    reuse = f"  service_count = {pop3_service_count}\n" if pop3_service_count != 1 else ""
    return f"""\
# Generated by bench/dovecot.py for the mailslot benchmark; see bench/README.md.
# A private instance: nothing here reads or changes /etc/dovecot.
instance_name = mailslot-bench
base_dir = {instance.base_dir}
state_dir = {instance.state_dir}
log_path = {instance.log}
protocols = pop3
listen = 127.0.0.1
default_internal_user = {INTERNAL_USER}
default_login_user = {LOGIN_USER}
default_process_limit = {others}
default_client_limit = {limit}
first_valid_uid = {mail_uid}

disable_plaintext_auth = no
auth_mechanisms = plain
auth_cache_size = 10M
passdb {{
  driver = passwd-file
  args = username_format=%Lu {instance.passwd}
}}
userdb {{
  driver = passwd-file
  args = username_format=%Lu {instance.passwd}
  default_fields = uid={MAIL_USER} gid={MAIL_USER}
}}

mail_location = maildir:{instance.mail_root}/%d/%n/Maildir
mail_fsync = optimized
pop3_uidl_format = %08Xu%08Xv

ssl = yes
ssl_cert = <{cert}
ssl_key = <{key}

service pop3-login {{
  inet_listener pop3 {{
    port = {POP3_PORT}
  }}
  inet_listener pop3s {{
    port = {POP3S_PORT}
    ssl = yes
  }}
  service_count = 0
  process_min_avail = 1
  process_limit = 4
  vsz_limit = 1G
}}
service pop3 {{
  process_limit = {limit}
  client_limit = 1
{reuse}}}
"""


def write_config(instance: Instance, *, max_sessions: int, pop3_service_count: int = 1) -> None:
    for user in (MAIL_USER, INTERNAL_USER, LOGIN_USER):
        ensure_system_user(user)
    cert, key = make_certificate(instance.work / "tls")
    for directory in (instance.root, instance.base_dir, instance.state_dir):
        directory.mkdir(parents=True, exist_ok=True)
    # The directories above the maildrops must be traversable by the mail user.
    instance.work.chmod(0o755)
    instance.conf.write_text(
        config_text(
            instance,
            max_sessions=max_sessions,
            cert=cert,
            key=key,
            pop3_service_count=pop3_service_count,
        )
    )


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout``."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def raise_fd_limit(wanted: int = FD_LIMIT) -> int:
    """Raise RLIMIT_NOFILE to ``wanted``, or as far as the hard limit allows
    (raising the hard limit needs CAP_SYS_RESOURCE).  Returns the soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, max(wanted, hard)))
    except (ValueError, OSError):
        if hard != resource.RLIM_INFINITY and soft < hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def _raise_limits() -> None:
    raise_fd_limit()


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
            sock.settimeout(5)
            return sock.recv(64).startswith(b"+OK")
    except OSError:
        return False


class Server:
    """``dovecot -F -c CONF`` as our child; its children inherit the CPU pinning."""

    name = "dovecot"

    def __init__(self, instance: Instance, *, cpu: int | None) -> None:
        self.instance = instance
        self.cpu = cpu
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 30) -> None:
        stop_stale(self.instance)
        binary = dovecot_binary()
        assert binary is not None
        command = [binary, "-F", "-c", str(self.instance.conf)]
        if self.cpu is not None and shutil.which("taskset"):
            command = ["taskset", "-c", str(self.cpu), *command]
        self._log_offset = self.instance.log.stat().st_size if self.instance.log.exists() else 0
        self.proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=open(self.instance.root / "stderr.log", "ab"),  # noqa: SIM115
            preexec_fn=_raise_limits,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dovecot exited at start; see {self.instance.log}")
            if _port_open(POP3_PORT):
                return
            time.sleep(0.05)
        self.stop()
        raise RuntimeError("dovecot did not start listening")

    def stop(self, timeout: float = 120) -> None:
        if self.proc is None:
            return
        terminate(self.proc, timeout)
        if self.proc.stderr is not None:
            self.proc.stderr.close()
        self.proc = None
        _wait_port_closed(POP3_PORT, 30)

    def log_problems(self) -> list[str]:
        """Error/Fatal/Panic lines written to the log since ``start()``."""
        try:
            with self.instance.log.open("rb") as file:
                file.seek(self._log_offset)
                text = file.read().decode("utf-8", "replace")
        except OSError:
            return []
        return [line for line in text.splitlines() if re.search(r"\b(Error|Fatal|Panic):", line)][
            :20
        ]


def _wait_port_closed(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
        except OSError:
            return
        time.sleep(0.1)


def stop_stale(instance: Instance) -> None:
    """Stop an instance left running by an interrupted benchmark (our base_dir only)."""
    pidfile = instance.base_dir / "master.pid"
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return
    if b"dovecot" not in cmdline or str(instance.conf).encode() not in cmdline:
        return
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    for _ in range(300):
        if not Path(f"/proc/{pid}").exists():
            break
        time.sleep(0.1)
    _wait_port_closed(POP3_PORT, 30)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="the benchmark's private Dovecot")
    parser.add_argument("action", choices=["install", "config", "start", "stop"])
    parser.add_argument("--work", type=Path, default=Path("/var/tmp/mailslot-bench"))
    parser.add_argument("--max-sessions", type=int, default=10000)
    parser.add_argument("--cpu", type=int, default=None)
    args = parser.parse_args(argv)
    instance = Instance(args.work.resolve())
    if args.action == "install":
        return 0 if install() else 1
    if args.action == "config":
        write_config(instance, max_sessions=args.max_sessions)
        print(instance.conf)
        return 0
    if args.action == "stop":
        stop_stale(instance)
        return 0
    # start: daemonised (no -F), so it outlives this command
    write_config(instance, max_sessions=args.max_sessions)
    binary = dovecot_binary()
    assert binary is not None
    command = [binary, "-c", str(instance.conf)]
    if args.cpu is not None:
        command = ["taskset", "-c", str(args.cpu), *command]
    subprocess.run(command, check=True, preexec_fn=_raise_limits)
    print(f"dovecot: pop3 on 127.0.0.1:{POP3_PORT}, pop3s on 127.0.0.1:{POP3S_PORT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
