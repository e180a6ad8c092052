"""Small /proc readers shared by the load generator and the runner.

Only the standard library; Linux only.  Nothing here writes anything.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import asdict, dataclass
from pathlib import Path

__all__ = [
    "CpuSample",
    "TreeMemory",
    "cpu_busy",
    "cpu_model",
    "cpu_sample",
    "process_tree",
    "tree_cpu_seconds",
    "tree_memory",
]


def _children_map() -> dict[int, list[int]]:
    """ppid -> [pid] for every process visible in /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry.name}/stat").read_text()
        except OSError:
            continue  # exited meanwhile
        # The command name is in parentheses and may contain spaces.
        fields = stat[stat.rfind(")") + 2 :].split()
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    return children


def process_tree(root: int) -> list[int]:
    """``root`` and all its descendants (threads are not processes here)."""
    children = _children_map()
    found = [root]
    index = 0
    while index < len(found):
        found.extend(children.get(found[index], ()))
        index += 1
    return found


@dataclass(frozen=True, slots=True)
class TreeMemory:
    """Memory of a set of processes, in KiB."""

    processes: int
    rss_kib: int  # sum of RSS: pages shared between processes counted once per process
    pss_kib: int  # sum of PSS: shared pages split between their users, so a true total

    def as_dict(self) -> dict[str, int]:
        return asdict(self)


_ROLLUP = re.compile(rb"^(Rss|Pss):\s+(\d+) kB", re.MULTILINE)


def _one_process_memory(pid: int) -> tuple[int, int] | None:
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as file:
            text = file.read()
    except FileNotFoundError:
        return None  # exited
    except OSError:
        text = b""
    values = {name.decode(): int(kib) for name, kib in _ROLLUP.findall(text)}
    if "Rss" in values and "Pss" in values:
        return values["Rss"], values["Pss"]
    # No smaps_rollup (old kernel) or not readable: RSS from status, PSS unknown.
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    match = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    rss = int(match.group(1)) if match else 0
    return rss, rss


def tree_memory(root: int) -> TreeMemory:
    """RSS and PSS summed over ``root`` and all its descendants."""
    rss = pss = count = 0
    for pid in process_tree(root):
        values = _one_process_memory(pid)
        if values is None:
            continue
        count += 1
        rss += values[0]
        pss += values[1]
    return TreeMemory(processes=count, rss_kib=rss, pss_kib=pss)


_TICKS = os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(root: int) -> float:
    """CPU time used so far by ``root``, its live descendants, and the children
    it has already reaped (Dovecot's master reaps its pop3 processes)."""
    total = 0
    for pid in process_tree(root):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rfind(")") + 2 :].split()
        # fields[0] is field 3 (state): utime, stime, cutime, cstime are 14-17.
        total += int(fields[11]) + int(fields[12])
        if pid == root:
            total += int(fields[13]) + int(fields[14])
    return total / _TICKS


@dataclass(frozen=True, slots=True)
class CpuSample:
    """Jiffies per CPU from /proc/stat: name -> (busy, total)."""

    cpus: dict[str, tuple[int, int]]


def cpu_sample() -> CpuSample:
    cpus: dict[str, tuple[int, int]] = {}
    with open("/proc/stat") as file:
        for line in file:
            if not line.startswith("cpu") or line.startswith("cpu "):
                continue
            name, *numbers = line.split()
            values = [int(v) for v in numbers]
            idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
            total = sum(values[:8])  # guest time is already included in user
            cpus[name] = (total - idle, total)
    return CpuSample(cpus)


def cpu_busy(before: CpuSample, after: CpuSample) -> dict[str, float]:
    """Percent busy per CPU between two samples."""
    busy: dict[str, float] = {}
    for name, (b1, t1) in after.cpus.items():
        b0, t0 = before.cpus.get(name, (b1, t1))
        busy[name] = round(100.0 * (b1 - b0) / (t1 - t0), 1) if t1 > t0 else 0.0
    return busy


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"
