"""The ``mailslot`` command, run as a new user would run it."""

from __future__ import annotations

import os
import poplib
import pwd
import re
import signal
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.helpers.clients import require_binary
from tests.helpers.server import ProcessServer, cli, free_port, write_config


def test_check_config_reports_key_and_exits_2(tmp_path: Path) -> None:
    config = write_config(tmp_path / "data")
    assert cli("check-config", "-c", str(config)).returncode == 0
    bad = tmp_path / "bad.toml"
    for text, key in (
        ('[pop3]\nlisten = ["127.0.0.1:0"]\nlsten = 1\n', "pop3.lsten"),
        ('[pop3]\nautologout = "soon"\n', "pop3.autologout"),
        ('[pop3]\nlisten = ["nowhere"]\n', "pop3.listen"),
        ('[storage]\nmail_location = "/srv/{domain}/Maildir"\n', "storage.mail_location"),
        ('[storage]\nmail_location = "/srv/{user}/{oops}"\n', "storage.mail_location"),
        ('[pop3s]\nlisten = ["127.0.0.1:995"]\n', "pop3s.listen"),
        ('[auth]\nmechanisms = ["CRAM-MD5"]\n', "auth.mechanisms"),
        ('[storage]\nlock_file = "/dev/null/locks"\n', "storage.lock_file"),
        ("not toml at all [", "cannot read"),
    ):
        bad.write_text(text)
        result = cli("check-config", "-c", str(bad))
        assert result.returncode == 2, (text, result.stderr)
        assert key.encode() in result.stderr, (key, result.stderr)
        assert b"Traceback" not in result.stderr


def test_serve_refuses_an_unusable_lock_file(tmp_path: Path) -> None:
    config = write_config(tmp_path / "data", storage__lock_file="/dev/null/locks")
    result = cli("serve", "-c", str(config))
    assert result.returncode == 2
    assert b"storage.lock_file: cannot open /dev/null/locks" in result.stderr
    assert b"Traceback" not in result.stderr


def test_lock_file_setting_is_relative_to_the_data_dir(tmp_path: Path) -> None:
    config = write_config(
        tmp_path / "data",
        storage__lock_file="run/maildrops.locks",
        metrics__listen=["127.0.0.1:9110"],
        server__proxy_networks=["10.0.0.5", "2001:db8::/32"],
    )
    result = cli("check-config", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert b"metrics listen 127.0.0.1:9110" in result.stdout
    assert b"PROXY protocol required from 10.0.0.5/32, 2001:db8::/32" in result.stdout
    expected = tmp_path / "data" / "run" / "maildrops.locks"
    assert f"maildrop locks {expected}".encode() in result.stdout
    assert expected.exists()


def test_missing_config_file(tmp_path: Path) -> None:
    result = cli("serve", "-c", str(tmp_path / "nope.toml"))
    assert result.returncode == 2
    assert b"config file not found" in result.stderr


def test_user_management(tmp_path: Path) -> None:
    config = str(write_config(tmp_path / "data"))
    assert (
        cli(
            "user", "add", "-c", config, "dave@example.org", "--password-stdin", stdin=b"pw one\n"
        ).returncode
        == 0
    )
    assert (
        cli(
            "user",
            "add",
            "--data",
            str(tmp_path / "data"),
            "erin",
            "--password-stdin",
            stdin=b"pw\n",
        ).returncode
        == 0
    )
    listing = cli("user", "list", "-c", config)
    assert names(listing.stdout) == [b"dave@example.org", b"erin@localhost"]
    assert b"credentials=scram" in listing.stdout
    again = cli("user", "add", "-c", config, "DAVE+example.org", "--password-stdin", stdin=b"x\n")
    assert again.returncode == 1 and b"already exists" in again.stderr
    assert (
        cli(
            "user",
            "passwd",
            "-c",
            config,
            "dave@example.org",
            "--password-stdin",
            stdin=b"pw two\n",
        ).returncode
        == 0
    )
    missing = cli("user", "passwd", "-c", config, "nobody", "--password-stdin", stdin=b"x\n")
    assert missing.returncode == 67
    no_tty = cli("user", "add", "-c", config, "frank")
    assert no_tty.returncode == 2 and b"--password-stdin" in no_tty.stderr
    bad_name = cli("user", "add", "-c", config, "../etc", "--password-stdin", stdin=b"x\n")
    assert bad_name.returncode == 2 and b"invalid user name" in bad_name.stderr
    assert cli("user", "del", "-c", config, "erin").returncode == 0
    assert names(cli("user", "list", "-c", config).stdout) == [b"dave@example.org"]
    assert (
        cli(
            "user", "quota", "-c", config, "dave@example.org", "--messages", "10", "--bytes", "5000"
        ).returncode
        == 0
    )
    assert b"quota=10/5000" in cli("user", "list", "-c", config).stdout
    negative = cli("user", "quota", "-c", config, "dave@example.org", "--messages", "-1")
    assert negative.returncode == 2 and b"Traceback" not in negative.stderr


def names(listing: bytes) -> list[bytes]:
    return [line.split(b"\t")[0] for line in listing.splitlines()]


def test_user_import_from_dovecot_passwd_file(tmp_path: Path) -> None:
    openssl = require_binary("openssl")
    data = tmp_path / "data"
    config = str(write_config(data))
    sha512 = subprocess.run(
        [openssl, "passwd", "-6", "secret one"], capture_output=True, text=True, check=True
    ).stdout.strip()
    passwd = tmp_path / "users"
    passwd.write_text(
        "# Dovecot passwd-file\n"
        f"hank@example.org:{{SHA512-CRYPT}}{sha512}:1000:1000::/home/hank::\n"
        "ivy:{PLAIN}secret two::::::\n"
        "broken line without a scheme:x\n"
    )
    dry = cli("user", "import", "-c", config, "--passwd-file", str(passwd), "--dry-run")
    assert b"would import 2 users" in dry.stdout
    assert names(cli("user", "list", "-c", config).stdout) == []
    result = cli("user", "import", "-c", config, "--passwd-file", str(passwd))
    assert b"imported 2 users" in result.stdout
    assert result.returncode == 1 and b"line 4" in result.stderr  # the broken line is reported
    assert sha512.encode() not in result.stderr
    srv = ProcessServer(Path(config))
    try:
        for user, password in (("hank@example.org", "secret one"), ("ivy", "secret two")):
            client = poplib.POP3(*srv.address, timeout=30)
            client.user(user)
            assert client.pass_(password).startswith(b"+OK Maildrop")
            client.quit()
    finally:
        srv.stop()
    # Rehashed to argon2id at that first login, with SCRAM keys.
    assert cli("user", "list", "-c", config).stdout.count(b"credentials=scram") == 2


def test_deliver_exit_codes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    config = str(write_config(data))
    cli("user", "add", "-c", config, "gina", "--password-stdin", stdin=b"pw\n")
    message = b"Subject: hi\r\n\r\nbody\r\n"
    assert cli("deliver", "-c", config, "gina", stdin=message).returncode == 0
    new = data / "mail" / "localhost" / "gina" / "Maildir" / "new"
    files = list(new.iterdir())
    assert len(files) == 1 and files[0].read_bytes() == message
    assert re.search(r",S=\d+,W=\d+$", files[0].name)
    unknown = cli("deliver", "-c", config, "gina", "nobody", stdin=message)
    assert unknown.returncode == 67
    assert len(list(new.iterdir())) == 1  # nothing delivered when a recipient is unknown
    tmp = data / "mail" / "localhost" / "gina" / "Maildir" / "tmp"
    tmp.rmdir()
    tmp.write_text("not a directory")  # storage failure: the MTA must retry
    failed = cli("deliver", "-c", config, "gina", stdin=message)
    assert failed.returncode == 75, failed.stderr
    assert b"Traceback" not in failed.stderr


def test_serve_without_config(tmp_path: Path) -> None:
    port = free_port()
    extra = ["--allow-root"] if os.geteuid() == 0 else []
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailslot",
            "serve",
            "--data",
            str(tmp_path / "d"),
            "--pop3",
            f"127.0.0.1:{port}",
            *extra,
        ],
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except ConnectionRefusedError:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        with sock:
            assert sock.recv(100) == b"+OK mailslot ready.\r\n"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    finally:
        proc.kill()
        proc.wait()
        assert proc.stderr is not None
        proc.stderr.close()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_refuses_to_serve_as_root(tmp_path: Path) -> None:
    result = cli("serve", "--data", str(tmp_path / "d"), "--pop3", "127.0.0.1:0")
    assert result.returncode == 2
    assert b"refusing to serve as root" in result.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root")
def test_drops_privileges_after_binding() -> None:
    """Root binds, then serves as ``nobody``: users added by root still log
    in, and mail is read and deleted as ``nobody``."""
    nobody = pwd.getpwnam("nobody")
    # Not under pytest's tmp_path: its parents are closed to other users.
    with tempfile.TemporaryDirectory(prefix="mailslot-user-") as top:
        root = Path(top)
        root.chmod(0o755)
        data = root / "data"
        config = root / "config.toml"
        config.write_text(
            f'[server]\ndata_dir = "{data}"\nuser = "nobody"\n'
            '[pop3]\nlisten = ["127.0.0.1:0"]\n[lmtp]\nlisten = ["127.0.0.1:0"]\n'
            "[auth]\nplaintext_without_tls = true\nargon2_time_cost = 1\n"
            "argon2_memory_kib = 64\n"
        )
        added = cli("user", "add", "-c", str(config), "alice", "--password-stdin", stdin=b"pw\n")
        assert added.returncode == 0, added.stderr
        srv = ProcessServer(config)
        try:
            host, port = srv.addresses["lmtp"]
            with smtplib.LMTP(host, port) as lmtp:
                lmtp.sendmail("a@b.test", ["alice"], b"Subject: hi\r\n\r\nbody\r\n")
            status = Path(f"/proc/{srv.proc.pid}/status").read_text()
            uids = re.search(r"^Uid:\s+(\d+)\s+(\d+)\s+(\d+)", status, re.MULTILINE)
            assert uids and {int(u) for u in uids.groups()} == {nobody.pw_uid}
            for _attempt in range(2):  # the second login needs a second DB connection
                client = poplib.POP3(*srv.address, timeout=10)
                client.user("alice")
                client.pass_("pw")
                assert client.stat()[0] == 1
                client.quit()
            client = poplib.POP3(*srv.address, timeout=10)
            client.user("alice")
            client.pass_("pw")
            assert b"body" in client.retr(1)[1]
            client.dele(1)
            client.quit()
        finally:
            srv.stop()
        assert (data / "users.sqlite3").stat().st_uid == nobody.pw_uid
        assert (data / "mail" / "mailslot.locks").stat().st_uid == nobody.pw_uid


def test_quickstart_then_curl(tmp_path: Path) -> None:
    curl = require_binary("curl")
    pop3, pop3s, lmtp = free_port(), free_port(), free_port()
    setup = tmp_path / "qs"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mailslot",
            "quickstart",
            "--dir",
            str(setup),
            "--pop3",
            f"127.0.0.1:{pop3}",
            "--pop3s",
            f"127.0.0.1:{pop3s}",
            "--lmtp",
            f"127.0.0.1:{lmtp}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stderr is not None
    try:
        out = ""
        while "Stop with Ctrl-C" not in out:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            out += line
        while "ready" not in proc.stderr.readline():
            pass
        command = re.search(r"^\s+(curl --cacert .*pop3s://\S+)$", out, re.MULTILINE)
        assert command, out
        password = re.search(r"password: (\S+)", out)
        assert password
        args = command.group(1).split()
        result = subprocess.run([curl, "-sS", *args[1:]], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert b"Subject: Welcome to mailslot" in result.stdout
        assert "Добро пожаловать".encode() in result.stdout
        stls = re.search(r"^\s+(curl --ssl-reqd .*pop3://\S+)$", out, re.MULTILINE)
        assert stls
        result = subprocess.run(
            [curl, "-sS", *stls.group(1).split()[1:]], capture_output=True, timeout=60
        )
        assert result.returncode == 0 and b"Welcome to mailslot" in result.stdout
        assert "SHA-256" in out
        # Mail arrives over LMTP and is the second message.
        with smtplib.LMTP("127.0.0.1", lmtp, timeout=30) as client:
            client.sendmail(
                "someone@example.org", ["demo@localhost"], b"Subject: via LMTP\r\n\r\nhi\r\n"
            )
        second = command.group(1).split()[1:]
        assert second[-1].endswith("/1")
        second[-1] = second[-1][: -len("/1")] + "/2"
        result = subprocess.run([curl, "-sS", *second], capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr
        assert b"Subject: via LMTP" in result.stdout
        assert b"Delivered-To: demo@localhost" in result.stdout
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(30)
        proc.stdout.close()
        proc.stderr.close()
    with socket.socket() as busy:  # a taken port: the rerun stops right after set-up
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        again = subprocess.run(
            [
                sys.executable,
                "-m",
                "mailslot",
                "quickstart",
                "--dir",
                str(setup),
                "--pop3",
                f"127.0.0.1:{taken}",
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert "existing" in again.stdout
    assert "password:" not in again.stdout
    assert again.returncode == 1 and "cannot listen" in again.stderr


def test_import_dovecot_maildir_keeps_uidls(tmp_path: Path) -> None:
    source = tmp_path / "dovecot" / "Maildir"
    for sub in ("cur", "new", "tmp"):
        (source / sub).mkdir(parents=True)
    one = b"Subject: one\n\nfirst\n"
    two = b"Subject: two\n\nsecond\n"
    (source / "cur" / "1700000000.M1P1.old,S=20:2,S").write_bytes(one)
    (source / "cur" / "1700000001.M2P1.old,S=21:2,").write_bytes(two)
    (source / "dovecot-uidlist").write_text(
        "3 V1700000000 N3 Gabcdef\n"
        "1 :1700000000.M1P1.old,S=20\n"
        "2 Pkept-by-dovecot :1700000001.M2P1.old,S=21\n"
    )
    data = tmp_path / "data"
    config = str(write_config(data))
    cli("user", "add", "-c", config, "jack", "--password-stdin", stdin=b"pw\n")
    dry = cli("import", "-c", config, "--from", "dovecot", "--dry-run", str(source), "jack")
    assert dry.returncode == 0 and b"would import 2 messages" in dry.stdout, dry.stderr
    done = cli("import", "-c", config, "--from", "dovecot", str(source), "jack")
    assert done.returncode == 0 and b"2 UIDLs kept" in done.stdout, done.stdout + done.stderr
    again = cli("import", "-c", config, "--from", "dovecot", str(source), "jack")
    assert again.returncode == 1 and b"import failed" in again.stderr  # no duplicates
    missing = cli("import", "-c", config, "--from", "mbox", str(tmp_path / "x"), "nobody")
    assert missing.returncode == 67
    srv = ProcessServer(Path(config))
    try:
        client = poplib.POP3(*srv.address, timeout=30)
        client.user("jack")
        client.pass_("pw")
        # %08Xu%08Xv: uid 1, uidvalidity 1700000000 = 0x6553f100 (Dovecot prints lower case)
        assert client.uidl()[1] == [b"1 000000016553f100", b"2 kept-by-dovecot"]
        assert client.retr(1)[1] == [b"Subject: one", b"", b"first"]
        client.quit()
    finally:
        srv.stop()
