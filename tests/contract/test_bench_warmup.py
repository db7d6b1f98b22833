"""The fixed-rate windows' warm-up (bench/run_bench.py, bench/baseline.py): the baseline's and the
platform's windows at 25/s each begin with ``BENCH_WARMUP_SECONDS`` of the same load whose
latencies are said apart and kept out of the p50/p99. The departments' consumers come to the
platform's window idle, and an idle consumer on the embedded broker fetches every 100 ms: its
first handoffs waited for that (docs/performance.md, twenty-eighth session)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

import run_bench
from baseline import split_warmup


def test_the_baselines_first_messages_in_the_sending_are_its_warmup_whatever_order_they_came() -> None:
    # Six partitions are consumed side by side: message 3 may be stored before message 1.
    came = [(3, 0.030), (1, 0.090), (5, 0.015), (2, 0.070), (4, 0.020), (6, 0.016)]
    measured, warmed = split_warmup(came, warmup=2)
    assert warmed == [0.090, 0.070]
    assert measured == [0.030, 0.020, 0.015, 0.016]
    assert split_warmup(came, warmup=0) == ([0.090, 0.070, 0.030, 0.020, 0.015, 0.016], [])


def test_a_window_qualifies_its_warmups_leads_and_its_own() -> None:
    args = argparse.Namespace(warmup=2.0, duration=30.0)
    assert run_bench.warmup_n(25, args) == 50
    assert run_bench.window_leads(25, args) == 800
    off = argparse.Namespace(warmup=0.0, duration=30.0)
    assert (run_bench.warmup_n(25, off), run_bench.window_leads(25, off)) == (0, 750)


def test_the_warmup_is_said_not_hidden() -> None:
    said = run_bench._warmup_said([0.020, 0.096, 0.018], sent=50)
    assert said == "3/50 delivered, not counted: p50 20.0 ms, max 96.0 ms"
    assert run_bench._warmup_said([], sent=50) == "none of 50 delivered"
    assert run_bench._warmup_said([], sent=0) == "none"
    assert run_bench._after_warmup(argparse.Namespace(warmup=2.0)) == " after a 2 s warm-up"
    assert run_bench._after_warmup(argparse.Namespace(warmup=0.0)) == ""
