"""``make run``'s year of history, played through the gateway at the demo clock.

Each account of a :mod:`~crm_platform.devinfra.demo_plan` plan is played as its users would
have lived it, through the public APIs only: marketing captures the lead and its behaviour
qualifies it, a rep accepts it and takes the deal to won (customer success reviewing the
commitments of the large ones), the CSM onboards the account, service reps work its tickets,
customers answer their CSAT and NPS links, the CSM logs check-ins and usage, action items go to
the three departments' queues and are worked there (one left open is escalated at its due date
and handed back to a member by the manager), sales answers flagged promises, and each
renewal is recorded. Every request carries ``X-CRM-Demo-Time`` (the services run with
``CRM_DEMO_CLOCK=true``), so the records and the events they emit carry the moment each step
happened; consumers apply a handoff at its own time plus the real transport.

Accounts are played in parallel (``workers`` threads), each account's steps in time order.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx
from crm_contracts import utcnow

from crm_platform.clock import DEMO_TIME_HEADER
from crm_platform.devinfra.demo_plan import (
    HISTORY_DAYS,
    AccountPlan,
    CheckIn,
    Flag,
    Item,
    Nps,
    Plan,
    Renewal,
    Ticket,
    plan_history,
)
from crm_platform.devinfra.journey import ADMIN, DEMO_USERS, JourneyError, until

SERVICE = "sven"  # service rep: tickets
CSM = "cora"  # customer success: onboarding, check-ins, surveys, items, renewals
MARKETING = "maria"
QUEUE_OWNER = {"marketing": ("leads", MARKETING), "customer-success": ("service-desk", CSM)}
BEHAVIOURS = ("page_view", "page_view", "email_open", "form_submit", "trial_signup")
COMMITMENT_TEXT = (
    "Data migration from the legacy CRM within 30 days",
    "Dedicated onboarding workshop",
    "Custom SSO integration before go-live",
)
LICENSED_USERS = 100


@dataclass
class Client:
    """The gateway, with each demo user's token (logged in again when it expires)."""

    base_url: str
    user_ids: dict[str, str] = field(default_factory=dict)
    requests: int = 0

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base_url, timeout=60.0)
        self.tokens: dict[str, str] = {}
        self.lock = threading.Lock()
        self.passwords = {ADMIN[0]: ADMIN[1], **{u: p for u, (p, _, _) in DEMO_USERS.items()}}

    def login(self, user: str, stale: str | None = None) -> str:
        """A token for ``user``: a new one unless another thread already replaced ``stale``
        (one login at a time: the gateway limits login attempts)."""
        with self.lock:
            current = self.tokens.get(user)
            if current is not None and current != stale:
                return current
            for _ in range(20):
                r = self.http.post("/auth/login", json={"username": user, "password": self.passwords[user]})
                if r.status_code != 429:
                    break
                time.sleep(float(r.json().get("retry_after", 1)))
            if r.status_code != 200:
                raise JourneyError(f"login {user}: {r.status_code} {r.text[:200]}")
            self.tokens[user] = str(r.json()["access_token"])
            return self.tokens[user]

    def call(
        self,
        user: str | None,
        method: str,
        path: str,
        at: datetime | None,
        body: Any = None,
        expect: tuple[int, ...] = (200, 201),
    ) -> Any:
        """One request as ``user`` (None: the customer, no login) at demo time ``at``."""
        for attempt in (1, 2):
            headers = {DEMO_TIME_HEADER: at.isoformat()} if at is not None else {}
            token = self.login(user) if user is not None else None
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            r = self.http.request(method, path, json=body, headers=headers)
            self.requests += 1  # a figure for the progress line: a lost increment does no harm
            if r.status_code == 401 and user is not None and attempt == 1:
                self.login(user, stale=token)  # the 15-minute token ran out during the seeding
                continue
            if r.status_code not in expect:
                raise JourneyError(f"{user} {method} {path} at {at}: {r.status_code} {r.text[:300]}")
            return r.json() if r.content else None
        raise JourneyError(f"{user} {method} {path}: unauthorised twice")

    def username_of(self, user_id: str) -> str:
        return next(u for u, i in self.user_ids.items() if i == user_id)


@dataclass
class Played:
    """What one account's steps left behind for the later ones (ids, in time order)."""

    lead_id: str = ""
    owner: str = ""
    opp_id: str = ""
    account_id: str = ""
    checklist: list[str] = field(default_factory=list)
    commitments: list[str] = field(default_factory=list)
    sources: list[tuple[datetime, str, str]] = field(default_factory=list)  # (at, kind, record id)


Step = tuple[datetime, int, Callable[[], None]]


class AccountPlayer:
    """One account's life, step by step in time order."""

    def __init__(self, client: Client, plan: AccountPlan, seed: int) -> None:
        self.c, self.plan, self.seed, self.s = client, plan, seed, Played()

    def play(self) -> None:
        self.win()
        for _, _, step in sorted(self.steps(), key=lambda s: (s[0], s[1])):
            step()

    def steps(self) -> list[Step]:
        p = self.plan
        out: list[Step] = [
            (at, 0, self._bind(self.onboarding_step, n, at)) for n, at in enumerate(p.onboarding)
        ]
        out += [(t.opened_at, 1, self._bind(self.ticket, t)) for t in p.tickets]
        out += [(c.held_at, 2, self._bind(self.checkin, c)) for c in p.checkins]
        out += [(n.sent_at, 3, self._bind(self.nps, n)) for n in p.nps]
        out += [(at, 4, self._bind(self.usage, at, ratio)) for at, ratio in p.usage]
        out += [(i.raised_at, 5, self._bind(self.item, i)) for i in p.items]
        out += [(r.recorded_at, 6, self._bind(self.renewal, r)) for r in p.renewals if r.recorded_at]
        if p.flag is not None:
            out.append((p.flag.flagged_at, 7, self._bind(self.flag, p.flag)))
        return out

    @staticmethod
    def _bind(fn: Callable[..., None], *args: Any) -> Callable[[], None]:
        return lambda: fn(*args)

    # -- marketing and sales ----------------------------------------------------------------

    def win(self) -> None:
        p, c = self.plan, self.c
        lead = c.call(MARKETING, "POST", "/api/leads/leads", p.captured_at, self._lead_body())["lead"]
        self.s.lead_id = lead_id = str(lead["id"])
        for i, behaviour in enumerate(BEHAVIOURS):
            body = {"behaviour": behaviour, "external_id": f"{lead_id}-{i}"}
            at = p.captured_at + timedelta(minutes=10 * (i + 1))
            c.call(MARKETING, "POST", f"/api/leads/leads/{lead_id}/behaviours", at, body)
        owner_id = until(lambda: self._inbox_owner(lead_id), timeout=90, what=f"lead {lead_id} in the inbox")
        self.s.owner = owner = c.username_of(owner_id)
        accepted = c.call(
            owner, "POST", f"/api/sales/inbox/{lead_id}/accept", p.captured_at + timedelta(hours=20), {}
        )
        self.s.opp_id = str(accepted["opportunity"]["id"])
        self._pipeline(owner)
        self._account()

    def _lead_body(self) -> dict[str, Any]:
        p = self.plan
        return {
            "name": f"Contact {p.index + 1:03d}",
            "email": f"contact{p.index + 1:03d}.s{self.seed}@demo-customer-{p.index + 1:03d}.example.com",
            "company": p.name,
            "source_channel": p.channel,
            "campaign": p.campaign,
            "consent": {"marketing_email": True},
        }

    def _inbox_owner(self, lead_id: str) -> str | None:
        item = self.c.call("sam", "GET", f"/api/sales/inbox/{lead_id}", None, expect=(200, 404))
        return item.get("owner") if isinstance(item, dict) and "owner" in item else None

    def _pipeline(self, owner: str) -> None:
        p, c, opp = self.plan, self.c, self.s.opp_id
        stage = f"/api/sales/opportunities/{opp}/stage"
        c.call(
            owner,
            "POST",
            f"/api/sales/opportunities/{opp}/activities",
            p.captured_at + timedelta(days=2),
            {"type": "call", "summary": "Discovery call: pains, budget owner, timeline"},
        )
        fields = {"budget": p.value, "decision_maker": "CFO"}
        c.call(
            owner, "POST", stage, p.captured_at + timedelta(days=3), {"stage": "discovery", "fields": fields}
        )
        products = [{"sku": "CRM-ENT", "name": "CRM Enterprise seat", "quantity": 1, "unit_price": p.value}]
        fields = {"amount": p.value, "products": products}
        c.call(owner, "POST", stage, p.won_at - timedelta(days=12), {"stage": "proposal", "fields": fields})
        commitments = [{"description": d} for d in COMMITMENT_TEXT[: p.commitments]]
        fields = {"close_date": p.won_at.date().isoformat(), "commitments": commitments}
        c.call(owner, "POST", stage, p.won_at - timedelta(days=6), {"stage": "negotiation", "fields": fields})
        if p.needs_review:
            self._review(owner)
        c.call(owner, "POST", stage, p.won_at, {"stage": "won", "fields": {}})

    def _review(self, owner: str) -> None:
        """Sales asks; the CSM approves each commitment a day later."""
        p, c, opp = self.plan, self.c, self.s.opp_id
        c.call(
            owner, "POST", f"/api/sales/opportunities/{opp}/commitment-review", p.won_at - timedelta(days=5)
        )

        def pending() -> dict[str, Any] | None:
            items = c.call(CSM, "GET", "/api/service-desk/commitment-reviews?status=pending&limit=500", None)
            return next((r for r in items["items"] if r["deal_id"] == opp), None)

        review = until(pending, timeout=90, what=f"the commitment review of {opp}")
        decisions = [
            {"commitment_id": x["commitment_id"], "decision": "approved"} for x in review["commitments"]
        ]
        path = f"/api/service-desk/commitment-reviews/{review['review_id']}/verdict"
        c.call(CSM, "POST", path, p.won_at - timedelta(days=4), {"decisions": decisions})
        until(
            lambda: (
                c.call(owner, "GET", f"/api/sales/opportunities/{opp}", None)["commitment_review"]["status"]
                == "approved"
            ),
            timeout=90,
            what=f"sales to see the approved review of {opp}",
        )

    def _account(self) -> None:
        def opened() -> dict[str, Any] | None:
            page = self.c.call(SERVICE, "GET", f"/api/service-desk/accounts?deal_id={self.s.opp_id}", None)
            items = page.get("items", page) if isinstance(page, dict) else page
            return items[0] if items else None

        account = until(opened, timeout=90, what=f"the account of deal {self.s.opp_id}")
        self.s.account_id = str(account.get("account_id") or account["id"])
        self.s.checklist = [str(i["key"]) for i in account["onboarding"]["checklist"]]
        self.s.commitments = [str(x["commitment_id"]) for x in account.get("commitments", [])]

    # -- customer success and service -------------------------------------------------------

    def onboarding_step(self, n: int, at: datetime) -> None:
        if n < len(self.s.checklist):
            path = f"/api/service-desk/accounts/{self.s.account_id}/checklist/{self.s.checklist[n]}/complete"
            self.c.call(CSM, "POST", path, at)

    def ticket(self, t: Ticket) -> None:
        c, a = self.c, self.s.account_id
        body = {
            "account_id": a,
            "subject": f"{t.priority} issue",
            "request": "Demo request",
            "priority": t.priority,
        }
        ticket = c.call(SERVICE, "POST", "/api/service-desk/tickets", t.opened_at, body)
        tid = str(ticket.get("ticket_id") or ticket["id"])
        c.call(
            SERVICE,
            "POST",
            f"/api/service-desk/tickets/{tid}/progress",
            t.first_response_at,
            {"note": "On it"},
        )
        c.call(
            SERVICE, "POST", f"/api/service-desk/tickets/{tid}/resolve", t.resolved_at, {"result": "Fixed"}
        )
        self.s.sources.append((t.opened_at, "ticket", tid))
        if t.csat is not None and t.answered_at is not None:
            sent = c.call(SERVICE, "POST", f"/api/service-desk/tickets/{tid}/csat-survey", t.resolved_at)
            self._answer(sent, t.csat, t.answered_at)

    def _answer(self, sent: dict[str, Any], score: int, at: datetime) -> None:
        token = str(sent["link"]).rsplit("/", 1)[1]
        body = {"score": score, "comment": "Demo answer"}
        self.c.call(None, "POST", f"/public/service-desk/surveys/{token}", at, body)

    def checkin(self, x: CheckIn) -> None:
        body = {
            "held_at": x.held_at.isoformat(),
            "attendees": ["Customer sponsor", "Cora"],
            "sentiment": x.sentiment,
        }
        path = f"/api/service-desk/accounts/{self.s.account_id}/checkins"
        out = self.c.call(CSM, "POST", path, x.held_at + timedelta(hours=2), body)
        self.s.sources.append((x.held_at, "check_in", str(out["checkin_id"])))

    def nps(self, n: Nps) -> None:
        path = f"/api/service-desk/accounts/{self.s.account_id}/nps-survey"
        sent = self.c.call(CSM, "POST", path, n.sent_at, expect=(200, 201, 409))
        if sent is None or "link" not in sent:
            return  # not due by the desk's schedule: nothing sent
        self.s.sources.append((n.sent_at, "survey", str(sent["survey_id"])))
        if n.score is not None and n.answered_at is not None:
            self._answer(sent, n.score, n.answered_at)

    def usage(self, at: datetime, ratio: float) -> None:
        body = {
            "active_users": round(ratio * LICENSED_USERS),
            "licensed_users": LICENSED_USERS,
            "as_of": at.isoformat(),
        }
        self.c.call(CSM, "PUT", f"/api/service-desk/accounts/{self.s.account_id}/usage", at, body)

    def renewal(self, r: Renewal) -> None:
        body: dict[str, Any] = {"outcome": r.outcome}
        if r.outcome == "churned":
            body["churn_reason"] = r.churn_reason
        else:
            body |= {"new_value": r.new_value, "new_term_months": 12}
        self.c.call(
            CSM, "POST", f"/api/service-desk/accounts/{self.s.account_id}/renewals", r.recorded_at, body
        )

    # -- voice of the customer and promises -------------------------------------------------

    def item(self, i: Item) -> None:
        kind, record = next(
            ((k, rid) for at, k, rid in reversed(self.s.sources) if k == i.source and at <= i.raised_at),
            ("account_note", f"note-{self.plan.index}-{i.raised_at:%Y%m%d}"),
        )
        body = {
            "department": i.department,
            "title": f"Follow up what the customer said ({kind})",
            "due_at": i.due_at.isoformat(),
            "account_id": self.s.account_id,
            "source": {"kind": kind, "record_id": record},
        }
        item_id = str(
            self.c.call(CSM, "POST", "/api/service-desk/action-items", i.raised_at, body)["item_id"]
        )
        service, user = QUEUE_OWNER.get(i.department, ("sales", self.s.owner))
        queue = f"/api/{service}/action-queue/{item_id}"
        if i.department != "customer-success":
            until(
                lambda: self._exists(user, queue), timeout=90, what=f"action item {item_id} at {i.department}"
            )
        if i.accepted_at is not None:
            self.c.call(user, "POST", f"{queue}/accept", i.accepted_at, {})
        self._reassign_if_left_open(i, queue, user)
        if i.closed_at is not None and i.outcome == "done":
            self.c.call(user, "POST", f"{queue}/complete", i.closed_at, {"note": "Done with the customer"})
        elif i.closed_at is not None:
            self.c.call(
                user, "POST", f"{queue}/decline", i.closed_at, {"reason": "Not something we will change"}
            )

    def _reassign_if_left_open(self, i: Item, queue: str, user: str) -> None:
        """An item nobody closes was escalated to the department's manager at its due date (on
        the history's clock, just before the manager's step); a day later the manager hands it
        to the department's member again (sales' manager, else an administrator)."""
        at = i.due_at + timedelta(days=1)
        if i.outcome != "open" or at > utcnow() - timedelta(minutes=10):
            return
        manager = "sam" if i.department == "sales" else ADMIN[0]
        self.c.call(manager, "POST", f"{queue}/assign", at, {"assignee": self.c.user_ids[user]})

    def _exists(self, user: str, path: str) -> bool:
        found = self.c.call(user, "GET", path, None, expect=(200, 404))
        return isinstance(found, dict) and "item_id" in found

    def flag(self, f: Flag) -> None:
        if not self.s.commitments:
            return
        path = f"/api/service-desk/accounts/{self.s.account_id}/commitments/{self.s.commitments[0]}/flag"
        out = self.c.call(CSM, "POST", path, f.flagged_at, {"reason": "Cannot be delivered as promised"})
        flag_id, opp = str(out["flag_id"]), self.s.opp_id

        def seen() -> bool:
            deal = self.c.call(self.s.owner, "GET", f"/api/sales/opportunities/{opp}", None)
            return any(x.get("flag_id") == flag_id for x in deal["commitment_flags"])

        until(seen, timeout=90, what=f"sales to see flag {flag_id}")
        base = f"/api/sales/opportunities/{opp}/commitment-flags/{flag_id}"
        self.c.call(self.s.owner, "POST", f"{base}/acknowledge", f.acknowledged_at)
        if f.resolved_at is not None:
            body = {"resolution": "Agreed a revised plan with the customer"}
            self.c.call(self.s.owner, "POST", f"{base}/resolve", f.resolved_at, body)


def play_history(
    client: Client, plan: Plan, *, workers: int = 6, progress: Callable[[str], None] = print
) -> dict[str, Any]:
    """Every account of ``plan``, ``workers`` at a time; returns what it did and how long it took."""
    started, done, failed = time.monotonic(), 0, 0
    every = max(1, len(plan.accounts) // 10)
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="demo-history") as pool:
        futures = [pool.submit(AccountPlayer(client, a, plan.seed).play) for a in plan.accounts]
        for future in as_completed(futures):
            error = future.exception()
            done += 1
            if error is not None:
                failed += 1
                progress(f"an account's history failed: {error}")
            if done % every == 0 or done == len(futures):
                elapsed = time.monotonic() - started
                progress(
                    f"history: {done}/{len(futures)} accounts, {client.requests} requests, "
                    f"{elapsed:.0f} s ({client.requests / max(elapsed, 0.001):.0f} requests/s)"
                )
    seconds = round(time.monotonic() - started, 1)
    return {"accounts": len(plan.accounts), "failed": failed, "requests": client.requests, "seconds": seconds}


HISTORY_MARK = "Demo Customer "  # the history's account names (demo_plan)
HIT_RATE_PATH = "/api/service-desk/churn-warnings/hit-rate?lookback_days=180"


def seed_history(
    gateway_url: str,
    *,
    accounts: int,
    seed: int,
    workers: int = 6,
    progress: Callable[[str], None] = print,
) -> dict[str, Any] | None:
    """Plan and play the history once per database (skipped when its accounts exist); prints
    the churn warning's hit rate measured on it. Returns the figures, None when skipped."""
    client = Client(gateway_url)
    try:
        for user in client.passwords:
            client.login(user)
        page = client.call(ADMIN[0], "GET", "/api/service-desk/accounts?limit=20", None)
        if any(str(a.get("name", "")).startswith(HISTORY_MARK) for a in page.get("items", [])):
            progress("demo history already played on this data; skipping")
            return None
        users = client.call(ADMIN[0], "GET", "/users?limit=500", None)["items"]
        client.user_ids = {u["username"]: u["id"] for u in users}
        plan = plan_history(seed, accounts, utcnow() - timedelta(minutes=5))
        progress(
            f"history: {accounts} accounts over {HISTORY_DAYS} days (seed {seed}, {workers} at a time): "
            f"{plan.renewals_recorded} renewals recorded, {plan.churned} churned"
        )
        figures = play_history(client, plan, workers=workers, progress=progress)
        rate = client.call(
            ADMIN[0], "GET", "/api/service-desk/churn-warnings/hit-rate?lookback_days=180", None
        )
        progress(f"history done in {figures['seconds']:.0f} s, {figures['requests']} requests")
        progress(f"churn warning against the history's renewals: {hit_rate_line(rate)}")
        rescore_now(client, progress)
        return {**figures, "hit_rate": rate}
    finally:
        client.http.close()


def rescore_now(client: Client, progress: Callable[[str], None]) -> None:
    """Each account was last scored at its history's last step; score every one again now, so
    the churn warnings are today's (renewals now due soon, check-ins now overdue) without
    waiting for the desk's hourly recompute. After the hit rate: a warning raised now comes
    after every recorded outcome and changes no figure of it."""
    try:
        done = client.call(ADMIN[0], "POST", "/api/service-desk/health/recompute", None)
    except (JourneyError, httpx.HTTPError) as exc:
        progress(f"health not scored again now ({exc}); the desk's hourly recompute will")
        return
    progress(f"health scored again now: {done.get('accounts')} accounts")


def hit_rate_line(rate: dict[str, Any]) -> str:
    return (
        f"precision {rate.get('precision')}, recall {rate.get('recall')} over {rate.get('evaluated')} "
        f"outcomes (TP {rate.get('true_positives')}, FP {rate.get('false_positives')}, "
        f"FN {rate.get('false_negatives')}, TN {rate.get('true_negatives')}; "
        f"lookback {rate.get('lookback_days')} days)"
    )
