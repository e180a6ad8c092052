"""Certificates for TLS tests (trustme), and TLS-enabled settings."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import trustme

from mailslot.config import Settings
from tests.helpers.server import make_settings


@dataclass
class Pki:
    ca: trustme.CA
    cert: Path
    key: Path
    ca_file: Path

    def client_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context()
        self.ca.configure_trust(context)
        return context


def make_pki(directory: Path) -> Pki:
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    server = ca.issue_cert("localhost", "127.0.0.1", "127.0.0.2", "::1")
    cert = directory / "cert.pem"
    key = directory / "key.pem"
    ca_file = directory / "ca.pem"
    server.private_key_pem.write_to_path(str(key))
    with cert.open("wb") as out:
        for blob in server.cert_chain_pems:
            out.write(blob.bytes())
    ca.cert_pem.write_to_path(str(ca_file))
    return Pki(ca=ca, cert=cert, key=key, ca_file=ca_file)


def tls_settings(data_dir: Path, pki: Pki, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "tls__cert": str(pki.cert),
        "tls__key": str(pki.key),
        "pop3s__listen": ["127.0.0.1:0"],
        "auth__plaintext_without_tls": False,
    }
    values.update(overrides)
    return make_settings(data_dir, **values)
