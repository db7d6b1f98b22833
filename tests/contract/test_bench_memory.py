"""The bench's resident-memory figure is each process's peak, not what a sample happened to see.

A service's memory can rise and fall between two samples (sales reaches its peak in the first
seconds of a backlog drain); a sampler that missed it would report the bound met when it was
not. bench/system.py's ``RssSampler`` ends on the process's own high-water mark (``VmHWM``).
Under load (``from_now``) the mark is the load's: a start-up's peak (the gateway's bootstrap
admin's argon2 hash, 64 MiB for a moment) is reported beside it, not as the load's.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import run_bench
import system

# A child that holds 64 MiB for a moment, lets it go, and waits to be told to exit.
_SPIKE = (
    "b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096]); del b; print('done', flush=True); input()"
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_peak_between_samples_is_still_the_peak() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _SPIKE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "done"
        now = system.rss_mb(child.pid)
        assert now is not None
        assert now < 64, "the spike is over: a sample now sees far less"
        with system.RssSampler({"child": child.pid}, interval=3600) as rss:
            pass  # no sample in between: only the start, the end and the high-water mark
        assert rss.peak["child"] >= 64
    finally:
        child.communicate("\n", timeout=10)


# A child that holds 64 MiB for a moment each time it is told to, then says so.
_SPIKES = (
    "import sys\n"
    "for _ in sys.stdin:\n"
    "    b = bytearray(64 * 2**20); b[::4096] = b'x' * len(b[::4096]); del b; print('done', flush=True)\n"
)


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc (Linux)")
def test_a_peak_before_the_window_is_not_the_windows_but_one_in_it_is() -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", _SPIKES], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    stdin, stdout = child.stdin, child.stdout
    assert stdin is not None
    assert stdout is not None

    def spike() -> None:
        stdin.write("spike\n")
        stdin.flush()
        assert stdout.readline().strip() == "done"

    try:
        spike()  # the start-up's peak
        with system.RssSampler({"child": child.pid}, interval=3600, from_now=True) as quiet:
            pass
        if "child" not in quiet.before:
            pytest.skip("this kernel does not reset VmHWM (/proc/<pid>/clear_refs)")
        assert quiet.before["child"] >= 64, "the start-up's peak is reported beside the window's"
        assert quiet.peak["child"] < 64, "and it is not the window's"
        with system.RssSampler({"child": child.pid}, interval=3600, from_now=True) as loaded:
            spike()  # between two samples, within the window
        assert loaded.peak["child"] >= 64
    finally:
        child.communicate("", timeout=10)


def test_the_drain_reports_its_memory_against_the_bound() -> None:
    drain = {
        "complete": True,
        "lost": 0,
        "doubled": 0,
        "events": 10,
        "rate": 6000.0,
        "drained": 10,
        "backlog": 10,
        "rss_mb": {"sales": 190.2},
    }
    targets = {t.name: t for t in run_bench._backlog_targets({"backlog_drain": drain})}
    memory = targets["resident memory draining the backlog"]
    assert (memory.met, memory.figure) == (False, "max 190 MB (sales)")
    drain["rss_mb"] = {"sales": 140.0, "sales-1": 120.0}
    targets = {t.name: t for t in run_bench._backlog_targets({"backlog_drain": drain})}
    assert targets["resident memory draining the backlog"].met
