"""When a handoff without a receipt is re-sent (pure: crm_platform.receipts.decide)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crm_platform.receipts import ResendPolicy, decide

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = ResendPolicy(after=timedelta(seconds=60), max_backoff=timedelta(seconds=300), max_attempts=3)


def published(seconds_ago: float) -> dict[str, object]:
    return {"published": True, "published_at": NOW - timedelta(seconds=seconds_ago)}


def test_the_wait_doubles_after_each_re_send_up_to_the_cap() -> None:
    waits = [POLICY.wait(n).total_seconds() for n in range(6)]
    assert waits == [60, 120, 240, 300, 300, 300]


def test_a_handoff_still_in_the_backlog_is_late_not_lost() -> None:
    decision = decide(POLICY, resends=0, outbox_row={"published": False}, now=NOW)
    assert decision.action == "wait"
    assert decision.next_check_at == NOW + timedelta(seconds=60)


def test_a_recent_publish_waits_until_its_timeout() -> None:
    decision = decide(POLICY, resends=1, outbox_row=published(100), now=NOW)
    assert decision.action == "wait"
    assert decision.next_check_at == NOW + timedelta(seconds=20)  # 120 s after the re-send


def test_a_publish_without_receipt_past_its_timeout_is_re_sent() -> None:
    decision = decide(POLICY, resends=0, outbox_row=published(60), now=NOW)
    assert decision.action == "resend"
    assert decision.next_check_at == NOW + timedelta(seconds=120)


def test_after_the_last_attempt_the_handoff_is_given_up() -> None:
    assert decide(POLICY, resends=3, outbox_row=published(300), now=NOW).action == "give_up"
    assert decide(POLICY, resends=2, outbox_row=published(240), now=NOW).action == "resend"


def test_a_handoff_whose_outbox_row_is_gone_cannot_be_re_sent() -> None:
    assert decide(POLICY, resends=0, outbox_row=None, now=NOW).action == "gone"
