"""A private MIT Kerberos realm for tests: its own KDC on a loopback port,
database, keytabs and credential cache, all in one directory.

``Realm.create`` needs ``kdb5_util``, ``kadmin.local`` and ``krb5kdc``
(Debian ``krb5-kdc``, ``krb5-admin-server``) and ``kinit`` (``krb5-user``).
Every program gets ``env``: ``KRB5_CONFIG`` and ``KRB5_KDC_PROFILE`` point
at the realm's files, ``KRB5CCNAME`` at its credential cache.
"""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.helpers.clients import require_binary
from tests.helpers.server import free_port

REALM = "MAILSLOT.TEST"

KRB5_CONF = """\
[libdefaults]
    default_realm = {realm}
    dns_lookup_realm = false
    dns_lookup_kdc = false
    rdns = false
    dns_canonicalize_hostname = false
    udp_preference_limit = 1
[realms]
    {realm} = {{
        kdc = 127.0.0.1:{port}
    }}
"""

KDC_CONF = """\
[kdcdefaults]
    kdc_listen = 127.0.0.1:{port}
    kdc_tcp_listen = 127.0.0.1:{port}
[realms]
    {realm} = {{
        database_name = {root}/principal
        key_stash_file = {root}/stash
        acl_file = {root}/kadm5.acl
        max_life = 1h
        supported_enctypes = aes256-cts-hmac-sha1-96:normal
    }}
[logging]
    kdc = FILE:{root}/kdc.log
"""


@dataclass
class Realm:
    root: Path
    port: int
    env: dict[str, str]
    kdc: subprocess.Popen[bytes]
    name: str = REALM
    keytabs: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def create(cls, root: Path) -> Realm:
        for program in ("kdb5_util", "kadmin.local", "krb5kdc", "kinit"):
            require_binary(program)
        root.mkdir(parents=True, exist_ok=True)
        port = free_port()
        (root / "krb5.conf").write_text(KRB5_CONF.format(realm=REALM, port=port))
        (root / "kdc.conf").write_text(KDC_CONF.format(realm=REALM, port=port, root=root))
        (root / "kadm5.acl").write_text("")
        env = {
            **os.environ,
            "KRB5_CONFIG": str(root / "krb5.conf"),
            "KRB5_KDC_PROFILE": str(root / "kdc.conf"),
            "KRB5CCNAME": f"FILE:{root}/ccache",
        }
        _run(env, "kdb5_util", "create", "-s", "-r", REALM, "-P", "master key for tests")
        kdc = subprocess.Popen(
            ["krb5kdc", "-n", "-r", REALM, "-P", str(root / "kdc.pid")],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        realm = cls(root=root, port=port, env=env, kdc=kdc)
        realm._wait_for_kdc()
        return realm

    def _wait_for_kdc(self) -> None:
        deadline = time.monotonic() + 20
        log = self.root / "kdc.log"
        while time.monotonic() < deadline:
            if self.kdc.poll() is not None:
                raise RuntimeError(f"krb5kdc exited: {self.kdc.communicate()[1]!r}")
            if log.exists() and "commencing operation" in log.read_text():
                return
            time.sleep(0.05)
        raise RuntimeError("krb5kdc did not start")

    def add_principal(self, name: str) -> Path:
        """A principal with a random key, exported to its own keytab."""
        keytab = self.root / (name.replace("/", "_") + ".keytab")
        _run(self.env, "kadmin.local", "-r", REALM, "-q", f"addprinc -randkey {name}")
        _run(self.env, "kadmin.local", "-r", REALM, "-q", f"ktadd -k {keytab} {name}")
        self.keytabs[name] = keytab
        return keytab

    def kinit(self, name: str) -> None:
        """A ticket-granting ticket for ``name`` in the realm's cache."""
        _run(self.env, "kinit", "-k", "-t", str(self.keytabs[name]), name)

    def stop(self) -> None:
        self.kdc.terminate()
        self.kdc.communicate(timeout=10)


def _run(env: dict[str, str], *command: str) -> None:
    result = subprocess.run(command, env=env, capture_output=True, timeout=60, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{command[0]} failed: {result.stdout!r} {result.stderr!r}")
