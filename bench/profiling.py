"""Sampling profiles of the platform's processes under the bench's load (py-spy).

``BENCH_PROFILE=1 make bench`` records each service process with ``py-spy`` while a
phase runs (lead capture through the gateway; the saturated handoff) and writes
``bench/results/profile/<phase>-<service>.txt`` (collapsed stacks, one per line
with its sample count, flamegraph.pl / speedscope compatible) and a summary of
where the samples fell, by the package of the innermost frame
(``bench/results/profile/summary.txt``). py-spy samples every thread's Python
stack ``rate`` times a second without stopping the process; idle samples (a
thread waiting in epoll/select) are left out with ``--idle`` off (the default).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path

PY_SPY = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")

# Innermost frame (py-spy prints "function (package/module.py:line)") -> bucket, first match wins.
BUCKETS: list[tuple[str, str]] = [
    (r"EpollSelector\.select|KqueueSelector\.select|\(selectors\.py", "idle (waiting in epoll)"),
    # Under uvloop the loop runs in C: a thread waiting in epoll, or in uvloop's own socket
    # code, shows Runner.run as its innermost Python frame; py-spy cannot tell them apart.
    (r"Runner\.run \(asyncio/runners\.py", "idle (waiting in epoll)"),
    (r"\(crm_platform/", "crm platform code"),
    (r"\((leads|sales|gateway|service_desk|analytics)/", "service code"),
    (r"\(crm_contracts/", "contracts"),
    (r"\(pydantic(_core)?/", "pydantic"),
    (r"\(fastapi/", "fastapi"),
    (r"\(starlette/", "starlette"),
    (r"\(uvicorn/", "uvicorn"),
    (r"\((h11|httptools)/", "HTTP parsing (h11/httptools)"),
    (r"\((httpx|httpcore)/", "httpx/httpcore (gateway upstream)"),
    (r"\((anyio|sniffio)/", "anyio"),
    (r"\((pymongo|bson)/", "pymongo/bson"),
    (r"\((aiokafka|kafka)/", "aiokafka"),
    (r"\((faust|mode)/", "faust/mode"),
    (r"\((jwt|cryptography)/", "JWT/crypto"),
    (r"\(prometheus_client/", "prometheus_client"),
    (r"\((logging|json)/", "logging/json"),
    (r"_SelectorSocketTransport\.write|sock_sendall|\(socket\.py|\(ssl\.py", "socket writes (syscalls)"),
    (r"\(asyncio/|uvloop", "event loop (asyncio/uvloop)"),
    (r"\(importlib|<frozen importlib", "imports"),
]


def _bucket(frame: str) -> str:
    for pattern, name in BUCKETS:
        if re.search(pattern, frame):
            return name
    return "other (stdlib, builtins)"


@contextlib.contextmanager
def profiled(phase: str, pids: Mapping[str, int], outdir: Path, rate: int = 0) -> Iterator[None]:
    """Record every process in ``pids`` while the ``with`` block runs (``rate`` 0:
    ``BENCH_PROFILE_BUSY_RATE`` samples a second, 50 by default)."""
    rate = rate or int(os.environ.get("BENCH_PROFILE_BUSY_RATE", "50"))
    if not os.environ.get("BENCH_PROFILE"):
        yield
        return
    outdir.mkdir(parents=True, exist_ok=True)
    procs: list[subprocess.Popen[bytes]] = []
    for name, pid in pids.items():
        out = outdir / f"{phase}-{name}.txt"
        cmd = [PY_SPY, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw"]
        cmd += ["--output", str(out), "--nonblocking"]
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    try:
        yield
    finally:
        for p in procs:
            p.send_signal(signal.SIGINT)
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()


def summarize(outdir: Path, top: int = 12) -> str:
    """Per profile file: samples by bucket of the innermost frame, and the hottest frames."""
    lines: list[str] = []
    for path in sorted(outdir.glob("*.txt")):
        if path.name == "summary.txt":
            continue
        buckets: Counter[str] = Counter()
        frames: Counter[str] = Counter()
        total = 0
        for line in path.read_text(errors="replace").splitlines():
            stack, _, count = line.rpartition(" ")
            if not count.isdigit():
                continue
            n = int(count)
            leaf = stack.rsplit(";", 1)[-1]
            total += n
            buckets[_bucket(leaf)] += n
            frames[leaf] += n
        if not total:
            continue
        idle = buckets.pop("idle (waiting in epoll)", 0)
        busy = total - idle
        if not busy:
            continue
        lines.append(f"== {path.stem}: {busy} busy samples ({idle} idle or in uvloop's C code, left out)")
        total = busy
        for name, n in buckets.most_common():
            lines.append(f"  {100 * n / total:5.1f}%  {name}")
        lines.append("  hottest innermost frames:")
        for frame, n in frames.most_common(top + 1):
            if _bucket(frame).startswith("idle"):
                continue
            lines.append(f"  {100 * n / total:5.1f}%  {frame[:150]}")
        lines.append("")
    text = "\n".join(lines)
    (outdir / "summary.txt").write_text(text)
    return text
