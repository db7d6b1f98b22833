"""A customer journey driven through the gateway, as real users would.

Used by ``make run`` for demo data and by the end-to-end tests, so the demo is
proof as much as the tests are: a lead captured by marketing, scored until
qualified, accepted by sales, taken through the pipeline to won, onboarded by
customer success, a ticket opened, resolved and rated, and an upsell handed
back to sales. Only public HTTP APIs are used, through the gateway.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx

T = TypeVar("T")

ADMIN = ("admin", "admin-dev-password")
DEMO_USERS: dict[str, tuple[str, list[str], str]] = {
    # username: (password, roles, display name)
    "maria": ("maria-demo-pass", ["marketing"], "Maria (marketing)"),
    "sam": ("sam-demo-pass-1", ["sales_manager"], "Sam (sales manager)"),
    "rita": ("rita-demo-pass1", ["sales_rep"], "Rita (sales rep)"),
    "rob": ("rob-demo-pass-1", ["sales_rep"], "Rob (sales rep)"),
    "sven": ("sven-demo-pass1", ["service_rep"], "Sven (service rep)"),
    "cora": ("cora-demo-pass1", ["customer_success_manager"], "Cora (customer success)"),
    "ana": ("ana-demo-pass-1", ["analyst"], "Ana (analyst)"),
    "eve": ("eve-demo-pass-1", ["executive"], "Eve (executive)"),
    "aude": ("aude-demo-pass1", ["auditor"], "Aude (auditor)"),
    "lena": ("lena-demo-pass1", ["service_lead"], "Lena (service lead)"),
    "mark": ("mark-demo-pass1", ["marketing_manager"], "Mark (marketing manager)"),
}


class JourneyError(AssertionError):
    pass


def until(check: Callable[[], T | None], *, timeout: float = 30.0, what: str) -> T:
    """Poll ``check`` until it returns something truthy (no fixed sleeps)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(0.1)
    raise JourneyError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@dataclass
class Gateway:
    base_url: str
    timeout: float = 30.0
    tokens: dict[str, str] = field(default_factory=dict)
    user_ids: dict[str, str] = field(default_factory=dict)  # username -> user id (the token's sub)

    def __post_init__(self) -> None:
        self.http = httpx.Client(base_url=self.base_url, timeout=self.timeout)

    def close(self) -> None:
        self.http.close()

    def login(self, username: str, password: str) -> str:
        r = self.http.post("/auth/login", json={"username": username, "password": password})
        if r.status_code != 200:
            raise JourneyError(f"login {username}: {r.status_code} {r.text}")
        token = str(r.json()["access_token"])
        self.tokens[username] = token
        return token

    def call(
        self, user: str, method: str, path: str, json: Any = None, expect: tuple[int, ...] = (200, 201)
    ) -> Any:
        headers = {"Authorization": f"Bearer {self.tokens[user]}"}
        r = self.http.request(method, path, json=json, headers=headers)
        if r.status_code not in expect:
            raise JourneyError(f"{user} {method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    def get(self, user: str, path: str) -> Any:
        return self.call(user, "GET", path)

    def public(self, method: str, path: str, json: Any = None, expect: tuple[int, ...] = (200, 201)) -> Any:
        """A call with no login, as a customer answering a survey link does."""
        r = self.http.request(method, path, json=json)
        if r.status_code not in expect:
            raise JourneyError(f"customer {method} {path}: {r.status_code} {r.text[:500]}")
        return r.json() if r.content else None

    def load_user_ids(self) -> dict[str, str]:
        """Every user's id by username, from the gateway's users API (as the admin)."""
        offset = 0
        while True:
            page = self.get("admin", f"/users?limit=500&offset={offset}")
            self.user_ids.update({u["username"]: u["id"] for u in page["items"]})
            offset += len(page["items"])
            if not page["items"] or offset >= page["total"]:
                return self.user_ids

    def username_of(self, user_id: str) -> str:
        """The username (to log in as) of a user id that services return as an owner or CSM."""
        for username, uid in self.user_ids.items():
            if uid == user_id:
                return username
        raise JourneyError(f"no user with id {user_id!r} (known: {sorted(self.user_ids)})")


def seed_users(gw: Gateway) -> dict[str, str]:
    """Create the demo users (idempotent) and log each one in."""
    gw.login(*ADMIN)
    for username, (password, roles, display) in DEMO_USERS.items():
        gw.call(
            "admin",
            "POST",
            "/users",
            {"username": username, "password": password, "roles": roles, "display_name": display},
            expect=(201, 409),
        )
        gw.login(username, password)
    gw.load_user_ids()
    return {ADMIN[0]: ADMIN[1], **{u: p for u, (p, _, _) in DEMO_USERS.items()}}


def seed_rosters(gw: Gateway) -> None:
    """Rosters name users by id (the token's ``sub``), looked up through the gateway's users API."""
    ids = gw.user_ids or gw.load_user_ids()

    def entry(username: str) -> dict[str, Any]:
        return {"user_id": ids[username], "name": DEMO_USERS[username][2], "active": True}

    gw.call("sam", "PUT", "/api/sales/reps", {"reps": [entry("rita"), entry("rob")]})
    gw.call("cora", "PUT", "/api/service-desk/csms", {"csms": [entry("cora")]})


@dataclass
class Journey:
    lead_id: str
    owner: str  # the rep's username (to log in as)
    owner_id: str  # the rep's user id: what sales stores as the owner
    opportunity_id: str
    account_id: str
    ticket_id: str
    upsell_opportunity_id: str


def capture_and_qualify(gw: Gateway, channel: str, campaign: str, name: str) -> str:
    email = f"{name.lower().replace(' ', '.')}.{uuid.uuid4().hex[:6]}@example.com"
    lead = gw.call(
        "maria",
        "POST",
        "/api/leads/leads",
        {
            "name": name,
            "email": email,
            "company": f"{name.split()[-1]} GmbH",
            "source_channel": channel,
            "campaign": campaign,
            "consent": {"marketing_email": True},
        },
    )["lead"]
    lead_id = str(lead["id"])
    qualified = False
    for i, behaviour in enumerate(("page_view", "page_view", "email_open", "form_submit", "trial_signup")):
        # The tracker's id per occurrence: two page views are two, a retried POST is one.
        body = {"behaviour": behaviour, "external_id": f"{lead_id}-{i}"}
        out = gw.call("maria", "POST", f"/api/leads/leads/{lead_id}/behaviours", body)
        qualified = qualified or bool(out.get("qualified_now"))
    if not qualified:
        raise JourneyError(f"lead {lead_id} did not qualify: {out}")
    return lead_id


def inbox_owner(gw: Gateway, lead_id: str, timeout: float = 30.0) -> str:
    def arrived() -> str | None:
        r = gw.http.get(
            f"/api/sales/inbox/{lead_id}", headers={"Authorization": f"Bearer {gw.tokens['sam']}"}
        )
        return r.json().get("owner") if r.status_code == 200 else None

    return until(arrived, timeout=timeout, what=f"lead {lead_id} in the sales inbox")


COMMITMENTS = [
    {"description": "Data migration from the legacy CRM within 30 days"},
    {"description": "Dedicated onboarding workshop"},
]


def win(gw: Gateway, owner: str, opp: str, timeout: float = 30.0) -> None:
    """Discovery, proposal and negotiation; customer success reviews the commitments; won."""
    stage = f"/api/sales/opportunities/{opp}/stage"
    gw.call(
        owner,
        "POST",
        f"/api/sales/opportunities/{opp}/activities",
        {"type": "call", "summary": "Discovery call: pains, budget owner, timeline"},
    )
    gw.call(
        owner, "POST", stage, {"stage": "discovery", "fields": {"budget": 50000, "decision_maker": "CFO"}}
    )
    products = [{"sku": "CRM-ENT", "name": "CRM Enterprise seat", "quantity": 50, "unit_price": 600}]
    gw.call(owner, "POST", stage, {"stage": "proposal", "fields": {"amount": 30000, "products": products}})
    gw.call(
        owner,
        "POST",
        f"/api/sales/opportunities/{opp}/activities",
        {"type": "quote", "summary": "Quote sent", "amount": 30000},
    )
    fields = {"close_date": "2027-01-31", "commitments": COMMITMENTS}
    gw.call(owner, "POST", stage, {"stage": "negotiation", "fields": fields})
    review_commitments(gw, owner, opp, timeout)
    gw.call(owner, "POST", stage, {"stage": "won", "fields": {}})


def review_commitments(gw: Gateway, owner: str, opp: str, timeout: float = 30.0) -> None:
    """Sales asks customer success to review what it promised; Cora approves every commitment."""
    gw.call(owner, "POST", f"/api/sales/opportunities/{opp}/commitment-review")

    def pending() -> dict[str, Any] | None:
        items = gw.get("cora", "/api/service-desk/commitment-reviews?status=pending&limit=500")["items"]
        return next((r for r in items if r["deal_id"] == opp), None)

    review = until(pending, timeout=timeout, what=f"the commitment review of {opp} at the service desk")
    decisions = [{"commitment_id": c["commitment_id"], "decision": "approved"} for c in review["commitments"]]
    gw.call(
        "cora",
        "POST",
        f"/api/service-desk/commitment-reviews/{review['review_id']}/verdict",
        {"decisions": decisions},
    )
    until(
        lambda: gw.get(owner, f"/api/sales/opportunities/{opp}")["commitment_review"]["status"] == "approved",
        timeout=timeout,
        what=f"sales to see the approved review of {opp}",
    )


def run_journey(
    gw: Gateway,
    channel: str,
    *,
    name: str = "Ada Lovelace",
    campaign: str = "autumn-webinar",
    timeout: float = 30.0,
    progress: Callable[[str], None] = lambda _: None,
) -> Journey:
    """One customer through every department: marketing, sales, customer success and back."""
    lead_id = capture_and_qualify(gw, channel, campaign, name)
    progress(f"lead {lead_id} captured on '{channel}' and qualified by its behaviour")
    owner_id = inbox_owner(gw, lead_id, timeout)
    owner = gw.username_of(owner_id)
    opp = accept_and_win(gw, owner, lead_id, timeout, progress)
    account = onboarded_account(gw, opp, timeout)
    account_id = str(account["id"] if "id" in account else account["account_id"])
    first = account["onboarding"]["checklist"][0]["key"]
    gw.call("cora", "POST", f"/api/service-desk/accounts/{account_id}/checklist/{first}/complete")
    progress(f"customer success onboarding account {account_id} (CSM {account.get('csm')}): '{first}' done")
    ticket_id = resolve_a_ticket(gw, account_id)
    progress(f"ticket {ticket_id} opened, resolved and rated 5 by the customer through the survey link")
    upsell_id = spot_an_upsell(gw, owner, opp, account_id, timeout)
    progress(f"upsell spotted by the service desk is opportunity {upsell_id} for {owner}")
    return Journey(lead_id, owner, owner_id, opp, account_id, ticket_id, upsell_id)


def accept_and_win(
    gw: Gateway, owner: str, lead_id: str, timeout: float, progress: Callable[[str], None]
) -> str:
    """The inbox owner accepts the lead (marketing sees the verdict) and wins the deal: its id."""
    accepted = gw.call(owner, "POST", f"/api/sales/inbox/{lead_id}/accept", {"note": "fits ICP"})
    opp = str(accepted["opportunity"]["id"])
    progress(f"sales rep {owner} accepted it: opportunity {opp}")
    until(
        lambda: gw.get("maria", f"/api/leads/leads/{lead_id}")["status"] == "accepted",
        timeout=timeout,
        what="marketing to see the verdict",
    )
    win(gw, owner, opp, timeout)
    progress(
        "taken through discovery, proposal, negotiation; customer success approved its two commitments; won"
    )
    return opp


def onboarded_account(gw: Gateway, opp: str, timeout: float) -> dict[str, Any]:
    """The account the service desk opened for the won deal (waits for the handoff)."""

    def onboarded() -> dict[str, Any] | None:
        items = gw.get("sven", f"/api/service-desk/accounts?deal_id={opp}")
        items = items.get("items", items) if isinstance(items, dict) else items
        return items[0] if items else None

    return until(onboarded, timeout=timeout, what="the won deal to become an account")


def resolve_a_ticket(gw: Gateway, account_id: str) -> str:
    """A ticket opened, worked on, resolved and rated 5 through the survey link: its id."""
    ticket = gw.call(
        "sven",
        "POST",
        "/api/service-desk/tickets",
        {
            "account_id": account_id,
            "subject": "SSO login fails",
            "request": "Users get an error after the SSO redirect",
            "priority": "high",
        },
    )
    ticket_id = str(ticket["id"] if "id" in ticket else ticket["ticket_id"])
    gw.call(
        "sven",
        "POST",
        f"/api/service-desk/tickets/{ticket_id}/progress",
        {"note": "Reproduced; IdP certificate rotated"},
    )
    gw.call(
        "sven",
        "POST",
        f"/api/service-desk/tickets/{ticket_id}/resolve",
        {"result": "Certificate updated, logins work"},
    )
    # The customer rates the ticket through the signed, single-use survey link (no login).
    link = gw.call("sven", "POST", f"/api/service-desk/tickets/{ticket_id}/csat-survey")["link"]
    gw.public("POST", f"/public/service-desk/surveys/{str(link).rsplit('/', 1)[1]}", {"score": 5})
    return ticket_id


def spot_an_upsell(gw: Gateway, owner: str, opp: str, account_id: str, timeout: float) -> str:
    """The service desk flags an upsell on the account; the id of the opportunity it became in sales."""
    signal = gw.call(
        "sven",
        "POST",
        f"/api/service-desk/accounts/{account_id}/signals",
        {
            "kind": "upsell",
            "description": "Wants the analytics add-on for 50 seats",
            "estimated_value": 12000,
        },
    )
    signal_id = signal.get("signal_id", signal.get("id"))

    def upsell() -> str | None:
        page = gw.get(owner, "/api/sales/opportunities?origin=upsell")
        for item in page["items"]:
            if item.get("source_deal_id") == opp or item.get("signal_id") == signal_id:
                return str(item["id"])
        return None

    return str(until(upsell, timeout=timeout, what="the upsell to reach sales"))


def seed_demo(gateway_url: str, progress: Callable[[str], None] = print) -> dict[str, str]:
    """Demo users, rosters and a few journeys so every screen has data."""
    gw = Gateway(gateway_url)
    try:
        credentials = seed_users(gw)
        seed_rosters(gw)
        existing = gw.get("maria", "/api/leads/leads?limit=1")["items"]
        if existing:
            progress("demo journey already played on this data; skipping")
            return credentials
        run_journey(gw, "webinar", name="Ada Lovelace", progress=progress)
        run_journey(gw, "web_form", name="Grace Hopper", campaign="trial-q4", progress=progress)
        # A lead sales rejects and one still being nurtured, for the verdict loop and scoring.
        rejected = capture_and_qualify(gw, "partner_api", "partner-referrals", "Alan Turing")
        owner = gw.username_of(inbox_owner(gw, rejected))  # sales stores the rep's user id
        gw.call(
            owner,
            "POST",
            f"/api/sales/inbox/{rejected}/reject",
            {"reason_code": "no_budget", "note": "Budget frozen until Q3"},
        )
        progress(f"lead {rejected} rejected by {owner} (no_budget)")
        # Marketing looks at the rejection and moves the lead to its nurture campaign (lead.edited:
        # marketing's first human step after sales' verdict, the lead-verdict business latency).
        gw.call("maria", "PATCH", f"/api/leads/leads/{rejected}", {"campaign": "nurture-q3"})
        nurturing = gw.call(
            "maria",
            "POST",
            "/api/leads/leads",
            {
                "name": "Katherine Johnson",
                "email": f"k.johnson.{uuid.uuid4().hex[:6]}@example.com",
                "company": "Orbit Ltd",
                "source_channel": "web_form",
                "consent": {"marketing_email": False},
            },
        )["lead"]
        gw.call("maria", "POST", f"/api/leads/leads/{nurturing['id']}/behaviours", {"behaviour": "page_view"})
        progress(f"lead {nurturing['id']} captured and nurturing")
        return credentials
    finally:
        gw.close()
