"""What the machine did while the bench ran: load average, resident memory, CPU time.

Read from ``/proc`` (Linux); elsewhere the figures are reported as unavailable.
The machine is shared (other processes run while the bench does), so every
figure that depends on CPU is printed next to a baseline measured in the same
run and the load average at that moment.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

TICKS = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
PAGE = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def rss_mb(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/statm").read_text().split()
    except OSError:
        return None
    return int(fields[1]) * PAGE / 2**20


def peak_rss_mb(pid: int) -> float | None:
    """The most resident memory the process has had since it started (``VmHWM``): a peak
    between two samples included."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process so far."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def sched_seconds(pid: int) -> tuple[float, float] | None:
    """(seconds on a core, seconds runnable but waiting for one) of all a process's threads so
    far (``/proc/<pid>/task/*/schedstat``)."""
    on, waiting = 0, 0
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            with contextlib.suppress(OSError):
                ran, waited = task.joinpath("schedstat").read_text().split()[:2]
                on, waiting = on + int(ran), waiting + int(waited)
    except OSError:
        return None
    return on / 1e9, waiting / 1e9


def sched_snapshot(pids: Mapping[str, int]) -> dict[str, tuple[float, float]]:
    return {name: t for name, pid in pids.items() if (t := sched_seconds(pid)) is not None}


def time_shares(
    before: Mapping[str, tuple[float, float]], after: Mapping[str, tuple[float, float]], wall: float
) -> dict[str, dict[str, float]]:
    """Each process's share of the wall time on a core and waiting for one (its threads summed:
    more than 1.0 is more than one core). The rest of a one-thread process's time (leads' event
    loop) it waited for I/O: for the import, for mongod and the broker (the serial chain)."""
    out = {}
    for name in before.keys() & after.keys():
        (r0, w0), (r1, w1) = before[name], after[name]
        out[name] = {"running": round((r1 - r0) / wall, 2), "waiting_for_a_core": round((w1 - w0) / wall, 2)}
    return out


def reset_peak_rss(pid: int) -> bool:
    """Start the process's high-water mark (``VmHWM``) again from its resident memory now
    (``/proc/<pid>/clear_refs``, value 5; Linux 4.0+). False when it could not be reset."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


class RssSampler:
    """Samples each named process's resident memory every ``interval`` s; keeps the peak. On
    exit the peak is also the process's own high-water mark (``VmHWM``), so a peak shorter than
    the interval is not missed.

    The high-water mark is since the process started, unless ``from_now``: then what it was when
    the sampler started is kept in :attr:`before` (a start-up's peak: the gateway hashes the
    bootstrap admin's password, 64 MiB for a moment) and the mark starts again from there, so
    :attr:`peak` is the window's alone. A process whose mark could not be reset keeps it since
    its start (its name is not in :attr:`before`)."""

    def __init__(self, pids: Mapping[str, int], interval: float = 1.0, *, from_now: bool = False) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.from_now = from_now
        self.peak: dict[str, float] = {}
        self.before: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> RssSampler:
        if self.from_now:
            for name, pid in self.pids.items():
                mb = peak_rss_mb(pid)
                if mb is not None and reset_peak_rss(pid):
                    self.before[name] = mb
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.sample()
        for name, pid in self.pids.items():
            mb = peak_rss_mb(pid)
            if mb is not None:
                self.peak[name] = max(self.peak.get(name, 0.0), mb)

    def sample(self) -> None:
        for name, pid in self.pids.items():
            mb = rss_mb(pid)
            if mb is not None:
                self.peak[name] = max(self.peak.get(name, 0.0), mb)

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()


def cpu_share(pids: Mapping[str, int], seconds: float) -> dict[str, float]:
    """Each process's CPU use over the next ``seconds``, in % of one core."""
    before = {name: cpu_seconds(pid) for name, pid in pids.items()}
    started = time.monotonic()
    time.sleep(seconds)
    elapsed = time.monotonic() - started
    out: dict[str, float] = {}
    for name, pid in pids.items():
        after, first = cpu_seconds(pid), before[name]
        if after is not None and first is not None:
            out[name] = round(100 * (after - first) / elapsed, 1)
    return out


def dir_mb(path: Path) -> float:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += (Path(root) / f).stat().st_size
            except OSError:
                pass
    return round(total / 2**20, 1)


def cpu_snapshot(pids: Mapping[str, int]) -> dict[str, float]:
    return {name: t for name, pid in pids.items() if (t := cpu_seconds(pid)) is not None}


def cpu_ms_per_op(
    before: Mapping[str, float], after: Mapping[str, float], ops: int, digits: int = 2
) -> dict[str, float]:
    """CPU milliseconds each process spent per operation between two snapshots, and the total
    (``digits`` decimals: 3 for the replay's events, a few hundredths of a millisecond each)."""
    if not ops:
        return {}
    out = {name: round(1000 * (after[name] - before[name]) / ops, digits) for name in before if name in after}
    out["total"] = round(sum(out.values()), digits)
    return out


def infra_pids(home: Path) -> dict[str, int]:
    """The embedded broker's and mongod's pids (from their pid files), if they run here."""
    out = {}
    for name, pidfile in (("broker", home / "kafka/noida-db.pid"), ("mongod", home / "mongo/mongod.pid")):
        try:
            out[name] = int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            pass
    return out


async def mongo_counters(uri: str) -> dict[str, float]:
    """mongod's operation counters so far (``serverStatus``): commands, queries, inserts,
    updates, deletes, getMores, committed transactions and documents inserted, updated,
    deleted and returned, and the requests it was sent; two snapshots around a phase give
    them per operation (the services' background polling included): statements in the
    opcounters, round trips in ``requests``."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri)
    try:
        status = await client.admin.command("serverStatus")
    finally:
        await client.close()
    out = {name: float(n) for name, n in status["opcounters"].items()}
    tx = status.get("transactions", {})
    out["transactions committed"] = float(tx.get("totalCommitted", 0))
    out["transactions aborted"] = float(tx.get("totalAborted", 0))
    out["write conflicts"] = float(status.get("metrics", {}).get("operation", {}).get("writeConflicts", 0))
    # Documents: opcounters' insert counts each document of an insert_many too (500 leads are
    # 500 inserts above and 500 here); round trips are the ``requests`` figures below.
    for name, n in status.get("metrics", {}).get("document", {}).items():
        out[f"documents {name}"] = float(n)
    out.update(_requests(status.get("metrics", {}).get("commands", {})))
    return out


# The commands counted one by one in ``requests`` (the rest are summed in it only).
REQUESTS_NAMED = ("insert", "update", "find", "aggregate", "findAndModify", "commitTransaction", "getMore")


def _requests(commands: Mapping[str, Any]) -> dict[str, float]:
    """Requests, not statements: ``opcounters`` count each statement of a bulk write (an
    ``insert_many`` of 5, or 5 upserts in one ``bulk_write``, is 5 there and one request here).
    ``requests`` is every command mongod was sent (monitoring's ``hello`` included), ``requests
    <name>`` a few of them alone."""
    totals = {name: float(v["total"]) for name, v in commands.items() if isinstance(v, dict) and "total" in v}
    out = {"requests": sum(totals.values())}
    out.update({f"requests {name}": totals.get(name, 0.0) for name in REQUESTS_NAMED})
    return out


async def mongo_top(uri: str) -> dict[str, float]:
    """mongod's time so far per collection (``top``: microseconds spent holding each
    collection's lock, its reads and writes); two snapshots around a phase say which
    collections its mongod time went to."""
    from pymongo import AsyncMongoClient

    client: AsyncMongoClient[dict[str, object]] = AsyncMongoClient(uri)
    try:
        totals = (await client.admin.command("top"))["totals"]
    finally:
        await client.close()
    return {ns: float(v["total"]["time"]) for ns, v in totals.items() if isinstance(v, dict) and "total" in v}


def top_ms_per_op(
    before: Mapping[str, float], after: Mapping[str, float], ops: int, top: int = 12
) -> dict[str, float]:
    """The collections with the most mongod time between two ``mongo_top`` snapshots, ms per op."""
    grown = {ns: (after[ns] - before.get(ns, 0.0)) / 1000 / max(ops, 1) for ns in after}
    return {ns: round(ms, 3) for ns, ms in sorted(grown.items(), key=lambda kv: -kv[1])[:top] if ms > 0}


def per_op(before: Mapping[str, float], after: Mapping[str, float], ops: int) -> dict[str, float]:
    """Each counter's growth between two snapshots per operation."""
    if not ops:
        return {}
    return {name: round((after[name] - before.get(name, 0.0)) / ops, 2) for name in after}


class CpuTimeline:
    """Each named process's CPU every ``interval`` s (``/proc/<pid>/stat``: one read per process)
    and its time on a core and waiting for one every ``sched_every`` samples
    (``/proc/<pid>/task/*/schedstat``, a read per thread: 3-9 ms of the bench's own CPU for the
    platform's processes, so not every 100 ms): which processes took the cores while a fixed-rate
    run was measured, and when. ``summary(ops)`` says it per operation and names the busiest
    windows (their processes' share of a core each)."""

    def __init__(self, pids: Mapping[str, int], interval: float = 0.1, sched_every: int = 20) -> None:
        self.pids = dict(pids)
        self.interval = interval
        self.sched_every = sched_every
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.sched: list[tuple[float, dict[str, tuple[float, float]]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="cpu-timeline", daemon=True)

    def __enter__(self) -> CpuTimeline:
        self._sample(sched=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sample(sched=True)

    def _sample(self, sched: bool) -> None:
        now = time.time()
        self.samples.append((now, cpu_snapshot(self.pids)))
        if sched:
            self.sched.append((now, sched_snapshot(self.pids)))

    def _run(self) -> None:
        n = 0
        while not self._stop.wait(self.interval):
            n += 1
            self._sample(sched=n % self.sched_every == 0)

    def until(self, last: float) -> None:
        """Forget the samples after the first one at or past ``last`` (epoch seconds: the last
        operation's end), so a wait for operations that never came is not counted in."""
        for samples in (self.samples, self.sched):
            ends = [i for i, (at, _) in enumerate(samples) if at >= last]
            if ends:
                del samples[ends[0] + 1 :]

    def windows(self) -> list[tuple[float, dict[str, float]]]:
        """(seconds since the start, each process's cores in use over that window)."""
        out = []
        start = self.samples[0][0]
        for (t0, a), (t1, b) in zip(self.samples, self.samples[1:], strict=False):
            wall = max(t1 - t0, 1e-6)
            out.append((t0 - start, {n: (b[n] - a[n]) / wall for n in a.keys() & b.keys()}))
        return out

    def summary(self, ops: int, busiest: int = 8) -> str:
        """CPU and core-waiting ms per operation by process, the share of windows with both cores
        busy, and the busiest windows."""
        (t0, first), (t1, last) = self.sched[0], self.sched[-1]
        ops = max(ops, 1)
        lines = [f"CPU over {t1 - t0:.1f} s, ms per operation ({ops}): on a core / waiting for one"]
        for name in sorted(first.keys() & last.keys(), key=lambda n: first[n][0] - last[n][0]):
            on, wait = (1000 * (last[name][i] - first[name][i]) / ops for i in (0, 1))
            lines.append(f"  {name:22s} {on:7.2f} / {wait:7.2f}")
        windows = self.windows()
        full = sum(1 for _, w in windows if sum(w.values()) >= 1.8)
        width = f"{self.interval * 1000:.0f} ms"
        lines.append(f"windows of {width} with >= 1.8 cores busy: {full}/{len(windows)}")
        for at, w in sorted(windows, key=lambda x: -sum(x[1].values()))[:busiest]:
            top = ", ".join(f"{n} {c:.2f}" for n, c in sorted(w.items(), key=lambda x: -x[1]) if c >= 0.05)
            lines.append(f"  at {at:6.1f} s: {sum(w.values()):.2f} cores ({top})")
        return "\n".join(lines)

    def write(self, path: Path) -> None:
        """Every window as a row (seconds since the start, then cores per process): to plot."""
        names = sorted(self.pids)
        rows = ["t\t" + "\t".join(names)]
        for at, w in self.windows():
            rows.append(f"{at:.2f}\t" + "\t".join(f"{w.get(n, 0.0):.3f}" for n in names))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("\n".join(rows) + "\n")
