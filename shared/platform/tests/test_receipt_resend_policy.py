"""When a handoff without a receipt is re-sent (pure: crm_platform.receipts.decide)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from crm_platform.receipts import Decision, ResendPolicy, decide

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
POLICY = ResendPolicy(
    after=timedelta(seconds=60),
    max_backoff=timedelta(seconds=300),
    max_attempts=3,
    silent_after=timedelta(seconds=900),
)


def published(seconds_ago: float) -> dict[str, object]:
    return {"published": True, "published_at": NOW - timedelta(seconds=seconds_ago)}


def check(resends: int, row: dict[str, object] | None, *, overtaken: bool = True) -> Decision:
    return decide(POLICY, resends=resends, outbox_row=row, now=NOW, overtaken=overtaken)


def test_the_wait_doubles_after_each_re_send_up_to_the_cap() -> None:
    waits = [POLICY.wait(n).total_seconds() for n in range(6)]
    assert waits == [60, 120, 240, 300, 300, 300]


def test_a_handoff_still_in_the_backlog_is_late_not_lost() -> None:
    decision = check(0, {"published": False})
    assert decision.action == "wait"
    assert decision.next_check_at == NOW + timedelta(seconds=60)


def test_a_recent_publish_waits_until_its_timeout() -> None:
    decision = check(1, published(100))
    assert decision.action == "wait"
    assert decision.next_check_at == NOW + timedelta(seconds=20)  # 120 s after the re-send


def test_an_overtaken_publish_without_receipt_past_its_timeout_is_re_sent() -> None:
    decision = check(0, published(60))
    assert decision.action == "resend"
    assert decision.next_check_at == NOW + timedelta(seconds=120)


def test_while_the_receiver_shows_no_progress_nothing_is_re_sent_until_the_silent_timeout() -> None:
    """A receiver that is down or catching up gets no copies to wade through."""
    decision = check(0, published(120), overtaken=False)
    assert decision.action == "wait"
    assert decision.next_check_at == NOW + timedelta(seconds=60)
    near = check(0, published(870), overtaken=False)
    assert near.action == "wait"
    assert near.next_check_at == NOW + timedelta(seconds=30)  # at the silent timeout
    assert check(0, published(900), overtaken=False).action == "resend"  # a lone handoff


def test_after_the_last_attempt_the_handoff_is_given_up() -> None:
    assert check(3, published(300)).action == "give_up"
    assert check(2, published(240)).action == "resend"


def test_a_handoff_whose_outbox_row_is_gone_cannot_be_re_sent() -> None:
    assert check(0, None).action == "gone"
