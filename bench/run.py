#!/usr/bin/env python3
"""mailslot against Dovecot, side by side, on the same Maildirs.

    python3 bench/run.py              # the full benchmark (about 15 minutes)
    python3 bench/run.py --quick      # the CI smoke test (under a minute)

Seeds the data once, then for every workload runs each server in turn
(mailslot, dovecot, mailslot, dovecot, ...), each run on a freshly started
server pinned to CPU 0 with the load generator pinned to CPU 1, and prints
one table of medians.  Exits 1 if any run had errors (such a run is marked
invalid and left out of the medians), 2 on bad usage.  See bench/README.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import dovecot  # noqa: E402
import mailslot_server  # noqa: E402
import seed  # noqa: E402
from procinfo import cpu_busy, cpu_model, cpu_sample  # noqa: E402

SERVER_CPU = 0
LOADGEN_CPU = 1
NOISY = 10.0  # % of a pinned CPU used by other processes that flags a result
KiB = 1024
MiB = 1024 * KiB

# ----------------------------------------------------------------------------- profiles


@dataclass(frozen=True)
class Profile:
    name: str
    runs: int
    session_concurrency: tuple[int, ...]
    session_duration: float
    session_warmup: float
    bulk_messages: int
    idle_sessions: tuple[int, ...]
    open_messages: int
    login_concurrency: int
    login_duration: float
    session_messages: int = 20
    session_size: int = 4 * KiB
    bulk_size: int = MiB
    idle_size: int = 4 * KiB
    open_size: int = 2 * KiB


FULL = Profile(
    name="full",
    runs=3,
    session_concurrency=(10, 50, 200),
    session_duration=10.0,
    session_warmup=1.0,
    bulk_messages=200,
    idle_sessions=(1000, 10000),
    open_messages=100_000,
    login_concurrency=4,
    login_duration=10.0,
)
QUICK = Profile(
    name="quick",
    runs=1,
    session_concurrency=(10,),
    session_duration=2.0,
    session_warmup=0.5,
    bulk_messages=20,
    idle_sessions=(200,),
    open_messages=10_000,
    login_concurrency=2,
    login_duration=2.0,
)
WORKLOADS = ("sessions", "bulk", "idle", "open", "login")

# ----------------------------------------------------------------------------- users


def login_of(local: str) -> str:
    return f"{local}@{seed.DOMAIN}"


def password_of(local: str) -> str:
    return f"pw-{local}"


@dataclass(frozen=True)
class UserSet:
    """A family of users: local parts ``prefix + index``, one maildrop each."""

    prefix: str
    width: int
    count: int
    messages: int
    size: int
    strong: bool = False  # password stored with the strong hash, not {PLAIN}

    def local(self, index: int) -> str:
        return f"{self.prefix}{index:0{self.width}d}"

    @property
    def user_format(self) -> str:
        return f"{self.prefix}{{:0{self.width}d}}@{seed.DOMAIN}"

    @property
    def password_format(self) -> str:
        return f"pw-{self.prefix}{{:0{self.width}d}}"

    def mailboxes(self) -> list[seed.Mailbox]:
        return [seed.Mailbox(self.local(i), self.messages, self.size) for i in range(self.count)]


def user_sets(profile: Profile, workloads: Sequence[str]) -> dict[str, UserSet]:
    sets: dict[str, UserSet] = {}
    if "sessions" in workloads:
        sets["sessions"] = UserSet(
            "s",
            4,
            max(profile.session_concurrency),
            profile.session_messages,
            profile.session_size,
        )
    if "bulk" in workloads:
        sets["bulk"] = UserSet(
            f"bulk{profile.bulk_messages}-", 1, 1, profile.bulk_messages, profile.bulk_size
        )
    if "idle" in workloads:
        sets["idle"] = UserSet("i", 5, max(profile.idle_sessions), 1, profile.idle_size)
    if "open" in workloads:
        sets["open"] = UserSet(
            f"big{profile.open_messages}-", 1, 1, profile.open_messages, profile.open_size
        )
    if "login" in workloads:
        sets["login"] = UserSet("a", 3, profile.login_concurrency, 1, 4 * KiB, strong=True)
    return sets


def strong_hashes(work: Path, locals_: list[str], dovecot_scheme: str | None) -> dict[str, Any]:
    """One ``{ARGON2ID}`` hash per strong user, made once with mailslot's default
    parameters (m=64 MiB, t=3, p=1; also ``doveadm pw -s ARGON2ID``'s) and given
    verbatim to both servers.  If this Dovecot lacks ARGON2ID it gets
    ``{SHA512-CRYPT}`` instead (noted: then the row is not like for like)."""
    import argon2  # noqa: PLC0415 (mailslot's own dependency)

    cache_path = work / "strong-hashes.json"
    try:
        cache: dict[str, dict[str, str]] = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    hasher = argon2.PasswordHasher(
        time_cost=3, memory_cost=65536, parallelism=1, type=argon2.Type.ID
    )
    changed = False
    for local in locals_:
        entry = cache.setdefault(local, {})
        if "mailslot" not in entry:
            entry["mailslot"] = "{ARGON2ID}" + hasher.hash(password_of(local))
            changed = True
        if dovecot_scheme == "ARGON2ID":
            entry["dovecot"] = entry["mailslot"]
        elif dovecot_scheme is not None and not entry.get("dovecot", "").startswith(
            "{" + dovecot_scheme
        ):
            entry["dovecot"] = dovecot.hash_password(dovecot_scheme, password_of(local))
            changed = True
    if changed:
        cache_path.write_text(json.dumps(cache, indent=1))
    return cache


def credentials(
    sets: dict[str, UserSet], hashes: dict[str, Any], server: str
) -> list[tuple[str, str]]:
    rows = []
    for user_set in sets.values():
        for index in range(user_set.count):
            local = user_set.local(index)
            stored = hashes[local][server] if user_set.strong else "{PLAIN}" + password_of(local)
            rows.append((login_of(local), stored))
    return rows


# ----------------------------------------------------------------------------- cases


class BenchServer(Protocol):
    name: str

    @property
    def pid(self) -> int: ...

    def start(self, timeout: float = ...) -> None: ...

    def stop(self, timeout: float = ...) -> None: ...

    def log_problems(self) -> list[str]: ...


@dataclass(frozen=True)
class Metric:
    label: str
    higher_is_better: bool
    extract: Callable[[dict[str, Any]], float]
    unit_format: str = "{:.1f}"


@dataclass
class Case:
    """One table section: a workload with its parameters."""

    key: str
    title: str
    workload: str
    user_set: str
    args: list[str]
    metrics: list[Metric]
    loadgen_timeout: float
    tls: bool = False
    cold: bool = False  # delete index files before the run; drop the page cache
    strong: bool = False  # needs mailslot's default argon2 parameters
    login_cache: bool = False  # mailslot's auth.cache_ttl on (Dovecot's auth cache always is)
    results: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


# auth.cache_ttl for the cached login row: Dovecot's auth_cache_ttl default (1 hour).
LOGIN_CACHE_TTL = 3600.0


def session_metrics() -> list[Metric]:
    return [
        Metric("sessions/s", True, lambda r: r["per_second"]),
        Metric("MB/s", True, lambda r: r["mb_per_second"]),
        Metric("p50 session ms", False, lambda r: r["p50_ms"], "{:.2f}"),
        Metric("p99 session ms", False, lambda r: r["p99_ms"], "{:.2f}"),
    ]


def build_cases(profile: Profile, workloads: Sequence[str], sets: dict[str, UserSet]) -> list[Case]:
    cases: list[Case] = []
    if "sessions" in workloads:
        for c in profile.session_concurrency:
            cases.append(
                Case(
                    key=f"sessions-c{c}",
                    title=f"sessions C={c}",
                    workload="sessions",
                    user_set="sessions",
                    args=[
                        "--concurrency",
                        str(c),
                        "--duration",
                        str(profile.session_duration),
                        "--warmup",
                        str(profile.session_warmup),
                        "--messages",
                        str(profile.session_messages),
                    ],
                    metrics=session_metrics(),
                    loadgen_timeout=profile.session_duration + profile.session_warmup + 120,
                )
            )
    if "bulk" in workloads:
        for tls in (False, True):
            mode = "TLS" if tls else "plain"
            cases.append(
                Case(
                    key=f"bulk-{mode.lower()}",
                    title=f"bulk {profile.bulk_messages} x 1 MiB, {mode}",
                    workload="bulk",
                    user_set="bulk",
                    args=["--messages", str(profile.bulk_messages), "--timeout", "600"],
                    metrics=[Metric("MB/s", True, lambda r: r["mb_per_second"])],
                    loadgen_timeout=900,
                    tls=tls,
                )
            )
    if "idle" in workloads:
        for n in profile.idle_sessions:
            cases.append(
                Case(
                    key=f"idle-{n}",
                    title=f"idle {n:,} sessions",
                    workload="idle",
                    user_set="idle",
                    args=["--sessions", str(n), "--timeout", "300"],
                    metrics=[
                        Metric("RSS KiB/session", False, lambda r: r["rss_kib_per_session"]),
                        Metric("PSS KiB/session", False, lambda r: r["pss_kib_per_session"]),
                        Metric("logins/s while opening", True, lambda r: r["logins_per_second"]),
                    ],
                    loadgen_timeout=1800,
                )
            )
    if "open" in workloads:
        n = profile.open_messages
        cases.append(
            Case(
                key=f"open-{n}",
                title=f"open {n:,}-message maildrop",
                workload="open",
                user_set="open",
                args=["--messages", str(n), "--repeat", "2", "--drop-caches", "--timeout", "600"],
                metrics=[
                    Metric("cold s", False, lambda r: r["seconds"][0], "{:.3f}"),
                    Metric("warm s", False, lambda r: r["seconds"][1], "{:.3f}"),
                ],
                loadgen_timeout=1300,
                cold=True,
            )
        )
    if "login" in workloads:
        c = profile.login_concurrency
        for cached in (False, True):
            cases.append(
                Case(
                    key="login-argon2id" + ("-cached" if cached else ""),
                    title=f"login argon2id C={c}"
                    + (", mailslot auth.cache_ttl on" if cached else ""),
                    workload="login",
                    user_set="login",
                    args=[
                        "--concurrency",
                        str(c),
                        "--duration",
                        str(profile.login_duration),
                        "--warmup",
                        str(profile.session_warmup),
                    ],
                    metrics=[
                        Metric("logins/s", True, lambda r: r["per_second"]),
                        Metric("p50 login ms", False, lambda r: r["p50_ms"]),
                    ],
                    loadgen_timeout=profile.login_duration + 180,
                    strong=True,
                    login_cache=cached,
                )
            )
    return cases


# ----------------------------------------------------------------------------- running


def pinned(command: list[str], cpu: int | None) -> list[str]:
    if cpu is None or shutil.which("taskset") is None:
        return command
    return ["taskset", "-c", str(cpu), *command]


def run_loadgen(
    case: Case, sets: dict[str, UserSet], server: str, pid: int, cpu: int | None
) -> dict[str, Any]:
    user_set = sets[case.user_set]
    if server == "mailslot":
        port = mailslot_server.POP3S_PORT if case.tls else mailslot_server.POP3_PORT
    else:
        port = dovecot.POP3S_PORT if case.tls else dovecot.POP3_PORT
    command = [
        sys.executable,
        str(BENCH / "loadgen.py"),
        case.workload,
        "--port",
        str(port),
        "--user-format",
        user_set.user_format,
        "--password-format",
        user_set.password_format,
        *case.args,
    ]
    if case.tls:
        command.append("--tls")
    command += ["--server-pid", str(pid)]
    try:
        done = subprocess.run(
            pinned(command, cpu),
            capture_output=True,
            text=True,
            timeout=case.loadgen_timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return {"errors": 1, "error_kinds": {"loadgen timed out": 1}}
    lines = done.stdout.strip().splitlines()
    try:
        result: dict[str, Any] = json.loads(lines[-1])
    except (IndexError, ValueError):
        return {"errors": 1, "error_kinds": {"loadgen failed: " + done.stderr[-1500:]: 1}}
    if done.stderr.strip():
        result["loadgen_stderr"] = done.stderr[-1500:]
    return result


def wait_quiet(max_wait: float, threshold: float = 10.0) -> float:
    """Wait (at most ``max_wait`` s) until no CPU is more than ``threshold`` %
    busy over one second: the machine may be shared.  Returns the last level."""
    deadline = time.monotonic() + max_wait
    said = False
    while True:
        before = cpu_sample()
        time.sleep(1.0)
        level = max(cpu_busy(before, cpu_sample()).values(), default=0.0)
        if level <= threshold or time.monotonic() >= deadline:
            return level
        if not said:
            print(
                f"    (waiting for a quiet machine: a CPU is {level:.0f}% busy)",
                file=sys.stderr,
                flush=True,
            )
            said = True
        time.sleep(2.0)


def foreign_load(result: dict[str, Any]) -> float | None:
    """CPU % taken by other processes on the two pinned CPUs (max of both)."""
    busy = result.get("cpu_busy_percent")
    if not busy or "server_cpu_percent" not in result:
        return None
    on_server = busy.get(f"cpu{SERVER_CPU}", 0.0) - result["server_cpu_percent"]
    on_loadgen = busy.get(f"cpu{LOADGEN_CPU}", 0.0) - result.get("loadgen_cpu_percent", 0.0)
    return round(float(max(0.0, on_server, on_loadgen)), 1)


def summary_line(case: Case, result: dict[str, Any]) -> str:
    if result.get("errors"):
        kinds = "; ".join(f"{n} x {k}" for k, n in result.get("error_kinds", {}).items())
        return f"INVALID ({result['errors']} errors: {kinds[:300]})"
    parts = []
    for metric in case.metrics:
        try:
            parts.append(f"{metric.label} " + metric.unit_format.format(metric.extract(result)))
        except (KeyError, IndexError, TypeError, ValueError):
            parts.append(f"{metric.label} ?")
    if "server_cpu_percent" in result:
        parts.append(
            f"CPU server {result['server_cpu_percent']:.0f}%"
            f" loadgen {result.get('loadgen_cpu_percent', 0):.0f}%"
            f" others {result.get('foreign_percent', 0):.0f}%"
        )
    return ", ".join(parts)


@dataclass
class Environment:
    work: Path
    profile: Profile
    sets: dict[str, UserSet]
    hashes: dict[str, Any]
    servers: list[str]
    pin: bool
    py_spy: Path | None
    quiet_wait: float
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    tls_cert: tuple[Path, Path] | None = None
    mailslot_keys: frozenset[str] = frozenset()
    mailslot_uvloop: bool = True
    git_at_start: str = field(default_factory=lambda: git_state())

    def mailslot_server(self, case: Case) -> mailslot_server.Server:
        config = mailslot_server.MailslotConfig(
            work=self.work,
            max_connections=max(11000, max(self.profile.idle_sessions) + 1000),
            strong_hash_params=case.strong or "auth.rehash" in self.mailslot_keys,
            tls=self.tls_cert,
            keys=self.mailslot_keys,
            cache_ttl=LOGIN_CACHE_TTL if case.login_cache else 0.0,
        )
        if "auth.rehash" not in self.mailslot_keys:
            # {PLAIN} passwords were upgraded to argon2id at the last logins.
            mailslot_server.reset_passwords(config, credentials(self.sets, self.hashes, "mailslot"))
        return mailslot_server.Server(
            config, cpu=SERVER_CPU if self.pin else None, uvloop=self.mailslot_uvloop
        )

    def dovecot_server(self) -> dovecot.Server:
        return dovecot.Server(dovecot.Instance(self.work), cpu=SERVER_CPU if self.pin else None)


def prepare_cold(env: Environment, case: Case, server: str) -> None:
    maildir = seed.Mailbox(env.sets[case.user_set].local(0), 0, 0).maildir(env.work / "mail")
    prefixes = ("mailslot-uidlist",) if server == "mailslot" else ("dovecot.", "dovecot-")
    seed.remove_index_files(maildir, prefixes)


def prewarm(env: Environment, case: Case) -> None:
    """Read the case's messages once, so that no server's first run pays for
    a disk the other's runs do not (an earlier cold open dropped the cache)."""
    user_set = env.sets[case.user_set]
    for index in range(user_set.count):
        cur = seed.Mailbox(user_set.local(index), 0, 0).maildir(env.work / "mail") / "cur"
        with os.scandir(cur) as entries:
            for entry in entries:
                with open(entry.path, "rb") as file:
                    while file.read(1 << 20):
                        pass


def run_case(env: Environment, case: Case) -> None:
    if not case.cold:
        prewarm(env, case)
    for run in range(env.profile.runs):
        for name in env.servers:
            if case.tls and name == "mailslot" and not _mailslot_tls(env):
                case.results.setdefault(name, []).append({"skipped": "no TLS listener"})
                continue
            if env.quiet_wait > 0:
                wait_quiet(env.quiet_wait)
            if case.cold:
                prepare_cold(env, case, name)
            server: BenchServer = (
                env.mailslot_server(case) if name == "mailslot" else env.dovecot_server()
            )
            begin = time.monotonic()
            try:
                server.start()
            except (RuntimeError, OSError) as exc:
                result: dict[str, Any] = {"errors": 1, "error_kinds": {f"start: {exc}"[:1500]: 1}}
            else:
                spy = _start_py_spy(env, case, name, server.pid, run)
                try:
                    result = run_loadgen(
                        case, env.sets, name, server.pid, LOADGEN_CPU if env.pin else None
                    )
                finally:
                    if spy is not None:
                        spy.wait(60)
                    problems = server.log_problems()
                    server.stop()
                if problems:
                    result["server_log_problems"] = problems
                    extra = len(problems) - 1
                    more = f" (+{extra}{' or more' if len(problems) >= 20 else ''} lines)"
                    more = more if extra else ""
                    env.warnings.append(
                        f"{case.title} / {name} run {run + 1}: server log: "
                        f"{problems[0][:240]}{more}"
                    )
            result["wall_seconds"] = round(time.monotonic() - begin, 1)
            foreign = foreign_load(result)
            if foreign is not None:
                result["foreign_percent"] = foreign
            case.results.setdefault(name, []).append(result)
            print(
                f"  {case.title:<32} run {run + 1}/{env.profile.runs} {name:<8} "
                f"{summary_line(case, result)}",
                file=sys.stderr,
                flush=True,
            )


def _mailslot_tls(env: Environment) -> bool:
    return env.tls_cert is not None and {"pop3s.listen", "tls.cert", "tls.key"} <= env.mailslot_keys


def _start_py_spy(
    env: Environment, case: Case, name: str, pid: int, run: int
) -> subprocess.Popen[bytes] | None:
    if env.py_spy is None or name != "mailslot" or shutil.which("py-spy") is None:
        return None
    env.py_spy.mkdir(parents=True, exist_ok=True)
    out = env.py_spy / f"{case.key}-run{run + 1}.speedscope.json"
    duration = env.profile.session_duration + env.profile.session_warmup
    return subprocess.Popen(
        pinned(
            [
                "py-spy",
                "record",
                "--format",
                "speedscope",
                "--output",
                str(out),
                "--duration",
                str(math.ceil(duration)),
                "--pid",
                str(pid),
                "--nonblocking",
            ],
            LOADGEN_CPU if env.pin else None,
        ),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


# ----------------------------------------------------------------------------- reporting


def valid_runs(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if not r.get("errors") and "skipped" not in r]


def median_of(metric: Metric, results: list[dict[str, Any]]) -> float | None:
    values = []
    for result in valid_runs(results):
        try:
            value = float(metric.extract(result))
        except (KeyError, IndexError, TypeError, ValueError):
            continue
        if not math.isnan(value):
            values.append(value)
    return statistics.median(values) if values else None


def cell(metric: Metric, results: list[dict[str, Any]] | None) -> tuple[str, float | None]:
    if results is None:
        return "skipped", None
    if results and all("skipped" in r for r in results):
        return "n/a (" + results[0]["skipped"] + ")", None
    value = median_of(metric, results)
    invalid = sum(1 for r in results if r.get("errors"))
    if value is None:
        return f"INVALID ({invalid}/{len(results)} runs had errors)", None
    text = metric.unit_format.format(value)
    noise = [r["foreign_percent"] for r in valid_runs(results) if "foreign_percent" in r]
    if noise and statistics.median(noise) > NOISY:
        text += " †"
    if invalid:
        text += f" ({invalid} invalid run{'s' if invalid > 1 else ''} left out)"
    return text, value


def table(cases: list[Case], servers: list[str]) -> tuple[str, list[dict[str, Any]]]:
    rows: list[dict[str, Any]] = []
    lines = [
        "| workload | mailslot | dovecot | ratio (mailslot / dovecot) |",
        "|---|---:|---:|---:|",
    ]
    for case in cases:
        for metric in case.metrics:
            arrow = "↑" if metric.higher_is_better else "↓"
            label = f"{case.title}: {metric.label} {arrow}"
            m_text, m_value = cell(metric, case.results.get("mailslot"))
            d_text, d_value = cell(
                metric, case.results.get("dovecot") if "dovecot" in servers else None
            )
            ratio = m_value / d_value if m_value is not None and d_value else None
            ratio_text = f"{ratio:.2f}" if ratio is not None else "-"
            lines.append(f"| {label} | {m_text} | {d_text} | {ratio_text} |")
            rows.append(
                {
                    "case": case.key,
                    "metric": metric.label,
                    "higher_is_better": metric.higher_is_better,
                    "mailslot": m_value,
                    "dovecot": d_value,
                    "ratio": ratio,
                }
            )
    return "\n".join(lines), rows


def cpu_table(cases: list[Case], servers: list[str]) -> str:
    """Median CPU %: the server (its process tree), the load generator, and
    other processes on the two pinned CPUs (a shared machine's noise)."""
    lines = [
        "| workload | " + " | ".join(f"{s}: server / loadgen / others" for s in servers) + " |",
        "|---|" + "---:|" * len(servers),
    ]
    any_row = False
    for case in cases:
        cells = []
        for server in servers:
            runs = [
                r for r in valid_runs(case.results.get(server, [])) if "server_cpu_percent" in r
            ]
            if not runs:
                cells.append("-")
                continue
            own = statistics.median(r["server_cpu_percent"] for r in runs)
            gen = statistics.median(r.get("loadgen_cpu_percent", 0.0) for r in runs)
            other = statistics.median(r.get("foreign_percent", 0.0) for r in runs)
            cells.append(f"{own:.0f}% / {gen:.0f}% / {other:.0f}%")
            any_row = True
        lines.append(f"| {case.title} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if any_row else ""


def git_state() -> str:
    repo = BENCH.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(repo), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
            timeout=10,
        ).stdout.strip()
        dirty = subprocess.run(
            [
                "git",
                "--no-optional-locks",
                "-C",
                str(repo),
                "status",
                "--porcelain",
                "--untracked-files=no",
                "--",
                "src",
            ],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return head + (" + uncommitted changes in src/" if dirty else "")


def server_uses_uvloop(allowed: bool) -> str:
    if not allowed:
        return "no: stdlib asyncio (--mailslot-loop asyncio)"
    probe = subprocess.run(
        [sys.executable, "-c", "import uvloop; print(uvloop.__version__)"],
        capture_output=True,
        text=True,
        check=False,
    )
    if probe.returncode == 0:
        return f"yes (uvloop {probe.stdout.strip()}, imported by `mailslot serve`)"
    return "no (stdlib asyncio)"


def machine_notes(env: Environment, dovecot_version: str | None) -> list[str]:
    try:
        import mailslot  # noqa: PLC0415

        mailslot_version = getattr(mailslot, "__version__", "?")
    except Exception:
        mailslot_version = "?"
    soft_fd = dovecot.raise_fd_limit()
    return [
        f"date: {datetime.datetime.now().astimezone().strftime('%Y-%m-%d %H:%M %Z')}",
        f"CPU: {cpu_model()}, {os.cpu_count()} cores",
        f"kernel: {platform.system()} {platform.release()}",
        f"Python: {platform.python_version()} ({sys.executable})",
        f"mailslot: {mailslot_version}, git {env.git_at_start}"
        + ("" if env.git_at_start == git_state() else f" at the start, {git_state()} at the end"),
        f"mailslot event loop: {server_uses_uvloop(env.mailslot_uvloop)}",
        "Dovecot: " + (dovecot_version or "not installed (skipped)"),
        "pinning: "
        + (
            f"server on CPU {SERVER_CPU} (Dovecot: the master, children inherit), "
            f"load generator on CPU {LOADGEN_CPU}"
            if env.pin
            else "none (fewer than 2 CPUs or no taskset)"
        ),
        f"open file limit: {soft_fd} per process",
    ]


# ----------------------------------------------------------------------------- ceiling


def loadgen_ceiling(env: Environment) -> int:
    """The load generator against fakepop.py (canned answers): its own limits."""
    cpu = SERVER_CPU if env.pin else None
    gen_cpu = LOADGEN_CPU if env.pin else None
    rows = []
    plans: list[tuple[str, list[str], list[str]]] = [
        (
            "sessions C=50, 20 x 4 KiB",
            ["--messages", "20", "--size", "4096"],
            ["sessions", "--concurrency", "50", "--duration", "5", "--messages", "20"],
        ),
        (
            "bulk 200 x 1 MiB, plain",
            ["--messages", "200", "--size", str(MiB)],
            ["bulk", "--messages", "200"],
        ),
    ]
    if env.tls_cert is not None:
        cert, key = env.tls_cert
        plans.append(
            (
                "bulk 200 x 1 MiB, TLS",
                [
                    "--messages",
                    "200",
                    "--size",
                    str(MiB),
                    "--tls-cert",
                    str(cert),
                    "--tls-key",
                    str(key),
                ],
                ["bulk", "--messages", "200", "--tls"],
            )
        )
    failed = 0
    for title, server_args, gen_args in plans:
        if env.quiet_wait > 0:
            wait_quiet(env.quiet_wait)
        fake = subprocess.Popen(
            pinned([sys.executable, str(BENCH / "fakepop.py"), "--port", "0", *server_args], cpu),
            stderr=subprocess.PIPE,
        )
        try:
            assert fake.stderr is not None
            line = fake.stderr.readline().decode()  # "fakepop listening on 127.0.0.1:PORT"
            if "listening" not in line:
                raise RuntimeError(f"fakepop did not start: {line}")
            port = int(line.rsplit(":", 1)[1])
            done = subprocess.run(
                pinned(
                    [
                        sys.executable,
                        str(BENCH / "loadgen.py"),
                        gen_args[0],
                        "--port",
                        str(port),
                        "--user-format",
                        "u{}",
                        "--password-format",
                        "p{}",
                        "--server-pid",
                        str(fake.pid),
                        *gen_args[1:],
                    ],
                    gen_cpu,
                ),
                capture_output=True,
                text=True,
                timeout=300,
                check=False,
            )
        finally:
            fake.terminate()
            fake.wait()
        result = json.loads(done.stdout.strip().splitlines()[-1])
        failed += bool(result.get("errors"))
        rows.append((title, result))
    print("\n| load generator against fakepop.py | result | loadgen CPU | fake server CPU |")
    print("|---|---:|---:|---:|")
    for title, r in rows:
        value = (
            f"{r['per_second']:.0f} sessions/s, {r['mb_per_second']:.0f} MB/s"
            if "per_second" in r
            else f"{r['mb_per_second']:.0f} MB/s"
        )
        if r.get("errors"):
            value = f"INVALID {r.get('error_kinds')}"
        print(
            f"| {title} | {value} | {r.get('loadgen_cpu_percent', 0):.0f}% "
            f"| {r.get('server_cpu_percent', 0):.0f}% |"
        )
    return 1 if failed else 0


# ----------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Benchmark mailslot against Dovecot on the same Maildirs."
    )
    parser.add_argument(
        "--quick", action="store_true", help="CI smoke test: small sizes, 1 run, under a minute"
    )
    parser.add_argument(
        "--workloads",
        default=",".join(WORKLOADS),
        help=f"comma-separated subset of {','.join(WORKLOADS)}",
    )
    parser.add_argument("--runs", type=int, default=None, help="runs per server (default 3)")
    parser.add_argument("--json", type=Path, default=None, help="write all results here")
    parser.add_argument(
        "--work", type=Path, default=None, help="data directory (default /var/tmp/mailslot-bench)"
    )
    parser.add_argument(
        "--servers", default="mailslot,dovecot", help="comma-separated subset of mailslot,dovecot"
    )
    parser.add_argument(
        "--no-install",
        action="store_true",
        help="never apt-get install Dovecot (--quick never does)",
    )
    parser.add_argument(
        "--quiet-wait",
        type=float,
        default=None,
        metavar="SECONDS",
        help="before each run, wait up to this long for idle CPUs (default 60; --quick: 0)",
    )
    parser.add_argument(
        "--dovecot-pop3-service-count",
        type=int,
        default=1,
        metavar="N",
        help="Dovecot's service pop3 { service_count }: 1 (default) = a fresh process"
        " per session; N > 1 reuses each pop3 process for N sessions",
    )
    parser.add_argument(
        "--mailslot-loop",
        choices=["auto", "asyncio"],
        default="auto",
        help="auto: uvloop when installed (what `mailslot serve` does); asyncio: never",
    )
    parser.add_argument(
        "--loadgen-ceiling",
        action="store_true",
        help="only measure the load generator against fakepop.py (canned answers)",
    )
    parser.add_argument(
        "--py-spy",
        type=Path,
        default=None,
        metavar="DIR",
        help="record a py-spy speedscope profile of each mailslot run",
    )
    args = parser.parse_args(argv)
    unknown = set(args.workloads.split(",")) - set(WORKLOADS)
    if unknown:
        parser.error(f"unknown workloads: {', '.join(sorted(unknown))}")
    return args


def _exit_on_sigterm(signum: int, frame: object) -> None:
    # SystemExit unwinds the ``finally`` blocks that stop the servers.
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    started = time.monotonic()
    signal.signal(signal.SIGTERM, _exit_on_sigterm)
    args = parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.runs is not None:
        profile = Profile(**{**profile.__dict__, "runs": max(1, args.runs)})
    workloads = [w for w in WORKLOADS if w in args.workloads.split(",")]
    work = (args.work or Path("/var/tmp/mailslot-bench")).resolve()
    work.mkdir(parents=True, exist_ok=True)
    wanted = [s for s in ("mailslot", "dovecot") if s in args.servers.split(",")]
    notes: list[str] = []

    if args.loadgen_ceiling:
        pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None
        cert = dovecot.make_certificate(work / "tls") if shutil.which("openssl") else None
        return loadgen_ceiling(
            Environment(
                work=work,
                profile=profile,
                sets={},
                hashes={},
                servers=[],
                pin=pin,
                py_spy=None,
                quiet_wait=args.quiet_wait or 0,
                tls_cert=cert,
            )
        )

    # Dovecot: use it if it is there; install it for a full run.
    dovecot_version: str | None = None
    if "dovecot" in wanted:
        usable = dovecot.version() is not None and dovecot.pop3_available()
        if not usable and not args.quick and not args.no_install:
            usable = dovecot.install()
        if usable and os.geteuid() != 0:
            notes.append("Dovecot skipped: the private instance needs root")
            usable = False
        if usable:
            dovecot_version = dovecot.version()
        else:
            wanted.remove("dovecot")
            notes.append("Dovecot skipped: not installed (dovecot-core, dovecot-pop3d)")
            print("dovecot: not installed, skipped", file=sys.stderr)
    servers = wanted
    pin = (os.cpu_count() or 1) >= 2 and shutil.which("taskset") is not None

    sets = user_sets(profile, workloads)
    owner = None
    if "dovecot" in servers:
        dovecot.ensure_system_user(dovecot.MAIL_USER)
        owner = dovecot.MAIL_USER
    print(f"seeding {work} ...", file=sys.stderr, flush=True)
    t = time.monotonic()
    boxes = [box for user_set in sets.values() for box in user_set.mailboxes()]
    rewritten = seed.seed_mailboxes(work, boxes, owner=owner)
    print(
        f"seeded ({rewritten} maildrops written) in {time.monotonic() - t:.1f} s", file=sys.stderr
    )

    dovecot_scheme = dovecot.strong_scheme() if "dovecot" in servers else None
    strong_locals = [
        user_set.local(i)
        for user_set in sets.values()
        if user_set.strong
        for i in range(user_set.count)
    ]
    hashes = strong_hashes(work, strong_locals, dovecot_scheme)
    if dovecot_scheme not in (None, "ARGON2ID"):
        notes.append(
            f"strong-hash row: Dovecot has no ARGON2ID, it uses {dovecot_scheme}; "
            "mailslot uses argon2id: not like for like"
        )

    tls_cert: tuple[Path, Path] | None = None
    if shutil.which("openssl"):
        tls_cert = dovecot.make_certificate(work / "tls")
    snapshot = mailslot_server.snapshot(work)
    if snapshot is not None:
        notes.append(
            f"mailslot: the servers ran a copy of the package taken at the start ({snapshot})"
        )
    keys = mailslot_server.known_keys()
    if not keys:
        print("cannot import mailslot.config", file=sys.stderr)
        return 1
    env = Environment(
        work=work,
        profile=profile,
        sets=sets,
        hashes=hashes,
        servers=servers,
        pin=pin,
        py_spy=args.py_spy,
        quiet_wait=args.quiet_wait if args.quiet_wait is not None else (0 if args.quick else 60),
        notes=notes,
        tls_cert=tls_cert,
        mailslot_keys=keys,
        mailslot_uvloop=args.mailslot_loop == "auto",
    )

    # The users, in each server's own database.
    mailslot_config = mailslot_server.MailslotConfig(
        work=work, max_connections=11000, strong_hash_params=False, tls=tls_cert, keys=keys
    )
    mailslot_server.write_users(mailslot_config, credentials(sets, hashes, "mailslot"))
    if "dovecot" in servers:
        instance = dovecot.Instance(work)
        dovecot.write_config(
            instance,
            max_sessions=max(profile.idle_sessions),
            pop3_service_count=args.dovecot_pop3_service_count,
        )
        if args.dovecot_pop3_service_count != 1:
            notes.append(
                f"Dovecot: service pop3 {{ service_count = {args.dovecot_pop3_service_count} }}"
                " (not the default 1): pop3 processes are reused across sessions"
            )
        dovecot.write_users(instance, credentials(sets, hashes, "dovecot"))

    if "auth.rehash" in keys:
        notes.append("mailslot: auth.rehash = false, {PLAIN} passwords stay {PLAIN}")
    else:
        notes.append(
            "mailslot: no auth.rehash setting yet, so a {PLAIN} password is upgraded to "
            "argon2id (t=1, m=8 KiB: cheap) at its first login; passwords are reset to "
            "{PLAIN} before every mailslot run"
        )
    if "bulk" in workloads and not _mailslot_tls(env):
        notes.append("mailslot: no POP3S listener (pop3s.listen/tls.* settings) yet: TLS row n/a")

    cases = build_cases(profile, workloads, sets)
    for case in cases:
        print(f"{case.title}", file=sys.stderr, flush=True)
        run_case(env, case)

    for case in cases:
        if case.cold:
            dropped = [
                r["page_cache_dropped"]
                for rs in case.results.values()
                for r in rs
                if "page_cache_dropped" in r
            ]
            if dropped and not all(dropped):
                notes.append(
                    "open: cold = first open after deleting the server's index files; "
                    "the page cache could NOT be dropped"
                )
            else:
                notes.append(
                    "open: cold = server's index/uid files deleted and page cache "
                    "dropped (sync; echo 3 > /proc/sys/vm/drop_caches) before the "
                    "first open; warm = the second open right after"
                )

    for case in cases:
        for name, results in case.results.items():
            if any(
                "Too many open files" in p
                for r in results
                for p in r.get("server_log_problems", [])
            ):
                soft = dovecot.raise_fd_limit()
                per = (
                    " (mailslot holds 2 per logged-in session: socket + maildrop lock)"
                    if name == "mailslot"
                    else ""
                )
                notes.append(
                    f"{case.title} / {name}: ran out of file descriptors{per}; the open-file "
                    f"limit here is {soft} and cannot be raised (raising the hard limit needs "
                    "CAP_SYS_RESOURCE)"
                )

    text, rows = table(cases, servers)
    machine = machine_notes(env, dovecot_version)
    loops = {
        str(r["loadgen_loop"])
        for c in cases
        for rs in c.results.values()
        for r in rs
        if "loadgen_loop" in r
    }
    machine.append("load generator event loop: " + (", ".join(sorted(loops)) or "?"))
    elapsed = time.monotonic() - started
    machine.append(
        f"runs per server: {profile.runs}; profile: {profile.name}; total runtime {elapsed:.0f} s"
    )
    print()
    print(text)
    cpu_text = cpu_table(cases, servers)
    if cpu_text:
        print("\nCPU during the measured window (100% = one core; server pinned to CPU 0,")
        print("load generator to CPU 1, 'others' = other processes on those CPUs):\n")
        print(cpu_text)
    print("\nMachine and notes:")
    for line in machine + notes:
        print(f"- {line}")
    if "dovecot" not in servers:
        print("- Dovecot was skipped: mailslot only")
    for warning in env.warnings:
        print(f"- warning: {warning}")
    invalid = [
        f"{case.title} / {server} run {i + 1}"
        for case in cases
        for server, results in case.results.items()
        for i, r in enumerate(results)
        if r.get("errors")
    ]
    if "†" in text:
        print(
            f"- † other processes took more than {NOISY:.0f}% of a pinned CPU during these runs"
            " (median): the machine was shared; treat with care"
        )
    if invalid:
        print("\nINVALID runs (errors): " + "; ".join(invalid))
    if args.json is not None:
        args.json.write_text(
            json.dumps(
                {
                    "profile": profile.__dict__,
                    "servers": servers,
                    "rows": rows,
                    "machine": machine,
                    "notes": notes,
                    "warnings": env.warnings,
                    "cases": {c.key: {"title": c.title, "results": c.results} for c in cases},
                },
                indent=1,
                default=str,
            )
        )
    return 1 if invalid else 0


if __name__ == "__main__":
    sys.exit(main())
