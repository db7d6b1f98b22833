"""A console wired to a fake gateway (httpx MockTransport): pages tested without a network."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from console.bootstrap import build_app
from console.settings import ConsoleSettings

pytest_plugins = ["crm_platform.testing"]
BEHAVIOURS = ("page_view", "email_open", "form_submit", "trial_signup")

USERS = {
    "maria": ("maria-pass", ["marketing"]),
    "rita": ("rita-pass", ["sales_rep"]),
    "admin": ("admin-pass", ["admin"]),
    "carl": ("carl-pass", ["customer_success_manager"]),
    "ana": ("ana-pass", ["analyst"]),
    "eve": ("eve-pass", ["executive"]),
    "aude": ("aude-pass", ["auditor"]),
    "sam": ("sam-pass", ["sales_manager"]),
    "sven": ("sven-pass", ["service_rep"]),
}


def token(username: str, roles: list[str], ttl: float = 900) -> str:
    now = time.time()
    claims = {"sub": f"user-{username}", "name": username, "roles": roles, "iat": now, "exp": now + ttl}
    return jwt.encode(claims, "not-verified-by-the-console-" * 2, algorithm="HS256")


@dataclass
class FakeGateway:
    """Just enough of the gateway's public API for the pages under test."""

    access_ttl: float = 900
    refresh_ok: bool = True
    revoked: set[str] = field(default_factory=set)  # access tokens the API answers 401 to
    leads: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str, Any]] = field(default_factory=list)
    refresh_tokens: dict[str, str] = field(default_factory=dict)  # refresh -> username
    success: FakeSuccess = field(default_factory=lambda: FakeSuccess())
    reports: FakeReports = field(default_factory=lambda: FakeReports())
    last_params: dict[str, str] = field(default_factory=dict)
    queues: FakeQueues = field(default_factory=lambda: FakeQueues())
    sales: FakeSales = field(default_factory=lambda: FakeSales())
    rule_drafts: list[tuple[str, Any]] = field(default_factory=list)  # scoring rules PUT or previewed

    def leads_api(self, method: str, path: str, payload: Any) -> httpx.Response:
        """Marketing's leads API: capture, the list, the scoring rules."""
        if path.startswith("/api/leads/scoring-rules"):
            return self.scoring(method, path.removeprefix("/api/leads/scoring-rules"), payload)
        if method == "POST":
            if "@" not in payload["email"]:
                return httpx.Response(
                    422,
                    json={
                        "error": "validation_error",
                        "message": "invalid input: body.email",
                        "fields": [{"field": "body.email", "message": "not an email address"}],
                    },
                )
            lead = {"id": f"lead-{len(self.leads) + 1}", **payload}
            self.leads[lead["id"]] = lead
            return httpx.Response(201, json={"merged": False, "lead": lead})
        return self.lead_page()

    def scoring(self, method: str, path: str, payload: Any) -> httpx.Response:
        """The scoring rules: current, history, a save, and a preview (a cap of 0 is refused)."""
        rules = {
            "version": 1,
            "rules": {b: {"weight": 5.0, "cap": None} for b in BEHAVIOURS},
            "threshold": 60.0,
            "changed_by": {"user_id": "system", "username": "system"},
            "changed_at": None,
            "note": None,
        }
        if path == "/history":
            return httpx.Response(200, json={"items": [rules]})
        if method == "GET":
            return httpx.Response(200, json=rules)
        self.rule_drafts.append((path, payload))
        for behaviour, rule in payload["rules"].items():
            if rule["cap"] == 0:
                field_name = f"rules.{behaviour}.cap"
                return httpx.Response(
                    422,
                    json={
                        "error": "rule_violation",
                        "message": f"invalid scoring rules: {field_name}: must be >= 1 (omit it for no cap)",
                        "details": {"field": field_name},
                    },
                )
        if path == "/preview":
            preview = {"current_version": 1, "leads": 1234, "qualify_current": 40, "qualify_draft": 95}
            return httpx.Response(200, json={**preview, "newly": 57, "no_longer": 2, "truncated": False})
        return httpx.Response(200, json={**rules, "version": 2})

    def lead_page(self) -> httpx.Response:
        """GET /leads as the leads API answers it: a bad score bound is a 422 naming its field."""
        low = self.last_params.get("min_score")
        if low is not None and not low.replace(".", "", 1).isdigit():
            return httpx.Response(
                422,
                json={
                    "error": "validation_error",
                    "message": "invalid input: query.min_score",
                    "fields": [{"field": "query.min_score", "message": "Input should be a valid number"}],
                },
            )
        items = [lead for lead in self.leads.values() if not self.last_params.get("q")]
        cursor = "next-page" if "cursor" not in self.last_params and items else None
        return httpx.Response(200, json={"items": items, "next_cursor": cursor})

    def issue(self, username: str) -> dict[str, Any]:
        refresh = f"r-{username}-{len(self.refresh_tokens)}"
        self.refresh_tokens[refresh] = username
        return {
            "access_token": token(username, USERS[username][1], self.access_ttl),
            "token_type": "bearer",
            "expires_in": int(self.access_ttl),
            "refresh_token": refresh,
            "refresh_expires_in": 28800,
            "roles": USERS[username][1],
        }

    def handle(self, request: httpx.Request) -> httpx.Response:
        body = request.read()
        payload: Any = httpx.Response(200, content=body).json() if body else None
        self.calls.append((request.method, request.url.path, payload))
        path = request.url.path
        if path == "/auth/login":
            user = USERS.get(payload["username"])
            if user is None or user[0] != payload["password"]:
                return httpx.Response(
                    401, json={"error": "unauthorized", "message": "unknown user or wrong password"}
                )
            return httpx.Response(200, json=self.issue(payload["username"]))
        if path == "/auth/refresh":
            username = self.refresh_tokens.pop(payload["refresh_token"], None)
            if not self.refresh_ok or username is None:
                return httpx.Response(401, json={"error": "unauthorized", "message": "session ended"})
            return httpx.Response(200, json=self.issue(username))
        auth = request.headers.get("authorization", "").removeprefix("Bearer ")
        if auth in self.revoked:
            return httpx.Response(401, json={"error": "unauthorized", "message": "token revoked"})
        claims = jwt.decode(auth, options={"verify_signature": False})
        if claims["exp"] < time.time():
            return httpx.Response(401, json={"error": "unauthorized", "message": "token expired"})
        self.last_params = dict(request.url.params)
        return self.api(request.method, path, payload, claims)

    def api(self, method: str, path: str, payload: Any, claims: dict[str, Any]) -> httpx.Response:
        if path == "/auth/me":
            return httpx.Response(
                200,
                json={
                    "id": claims["sub"],
                    "username": claims["name"],
                    "display_name": claims["name"].title(),
                    "roles": claims["roles"],
                },
            )
        if path == "/auth/logout":
            return httpx.Response(204)
        if path == "/api/leads/leads" or path.startswith("/api/leads/scoring-rules"):
            return self.leads_api(method, path, payload)
        if path.startswith("/api/sales/opportunities") or path in (
            "/api/sales/pipeline",
            "/api/sales/reps/response-times",
            "/api/sales/config",
        ):
            return self.sales.api(method, path, payload, self.last_params)
        if "/action-queue" in path or path in ("/api/sales/reps", "/api/service-desk/csms"):
            return self.queues.api(method, path, payload, claims)
        if path in ("/api/analytics/summary", "/api/analytics/handoffs/series"):
            return self.reports.analytics(path, self.last_params)
        if path.startswith("/api/analytics/kpis") or path.endswith(("/audit", "/audit/export")):
            return self.reports.api(path, self.last_params, claims)
        if path.startswith("/api/service-desk/"):
            return self.success.api(method, path.removeprefix("/api/service-desk"), payload)
        return httpx.Response(404, json={"error": "not_found", "message": f"no fake for {method} {path}"})


def _account(account_id: str, name: str, renewal_date: str) -> dict[str, Any]:
    value = {"amount": 12000, "currency": "EUR"}
    return {
        "account_id": account_id,
        "name": name,
        "lead_id": None,
        "value": value,
        "won_at": "2026-01-05T10:00:00Z",
        "onboarding": {"status": "completed", "checklist": []},
        "commitments": [],
        "products": [],
        "contacts": [],
        "signals": [],
        "tier": "standard",
        "term": {"start": "2026-01-05T00:00:00Z", "months": 12, "renewal_date": renewal_date, "value": value},
    }


@dataclass
class FakeSuccess:
    """Service desk's customer-success routes (accounts, health, renewals, check-ins)."""

    accounts: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "acc-1": _account("acc-1", "Globex", "2026-12-20T00:00:00Z"),
            "acc-2": _account("acc-2", "Initech", "2026-11-30T00:00:00Z"),
        }
    )
    health: dict[str, Any] = field(
        default_factory=lambda: {
            "acc-1": {
                "score": 81.0,
                "band": "healthy",
                "rules_version": 3,
                "reasons": [{"component": "checkins", "points": 10.0, "detail": "check-ins on cadence"}],
                "scored_at": "2026-12-01T08:00:00Z",
                "at_risk": False,
                "signals": [],
                "signal_details": [],
                "at_risk_since": None,
            },
            "acc-2": {
                "score": 34.0,
                "band": "at_risk",
                "rules_version": 3,
                "reasons": [
                    {"component": "tickets", "points": -25.0, "detail": "4 urgent tickets in 30 days"}
                ],
                "scored_at": "2026-12-01T08:00:00Z",
                "at_risk": True,
                "signals": ["tickets"],
                "signal_details": ["4 urgent tickets in 30 days"],
                "at_risk_since": "2026-11-20T00:00:00Z",
            },
        }
    )
    renewals: list[dict[str, Any]] = field(default_factory=list)
    checkins: list[dict[str, Any]] = field(default_factory=list)
    raised: list[dict[str, Any]] = field(default_factory=list)
    rules: dict[str, Any] = field(
        default_factory=lambda: {"version": 3, "rules": {"base": 60.0, "window_days": 90}}
    )
    reviews: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {
            "rev-1": {
                "review_id": "rev-1",
                "deal_id": "opp-9",
                "account_name": "Umbrella",
                "sales_owner": "user-rita",
                "value": {"amount": 250000, "currency": "EUR"},
                "commitments": [
                    {"commitment_id": "c1", "description": "24/7 phone support", "due_date": None},
                    {"commitment_id": "c2", "description": "Custom SAP connector", "due_date": None},
                ],
                "reasons": ["value 250000 at or over 100000"],
                "requested_by": "user-rita",
                "requested_at": "2026-12-04T09:00:00Z",
                "received_at": "2026-12-04T09:00:01Z",
                "status": "pending",
                "decisions": [],
                "reviewed_by": None,
                "reviewed_at": None,
                "superseded_by": None,
            }
        }
    )

    def extras(self, method: str, path: str, payload: Any) -> httpx.Response | None:  # noqa: C901
        """Action items raised, churn warnings, health rules, commitment reviews."""
        parts = path.strip("/").split("/")
        if path == "/action-items" and method == "POST":
            if payload["title"] == "refuse me":
                return httpx.Response(
                    422,
                    json={
                        "error": "rule_violation",
                        "message": "the due date must be in the future",
                        "details": {"field": "body.due_at"},
                    },
                )
            item = {"item_id": f"ai-{len(self.raised) + 1}", "status": "open", "history": [], **payload}
            self.raised.append(item)
            return httpx.Response(201, json=item)
        if len(parts) == 3 and parts[2] == "action-items":
            items = [i for i in self.raised if i["account_id"] == parts[1]]
            return httpx.Response(200, json={"items": items, "count": len(items)})
        if path == "/churn-warnings":
            a = self.accounts["acc-2"]
            h = self.health["acc-2"]
            item = {
                "account_id": "acc-2",
                "account_name": a["name"],
                "tier": a["tier"],
                "account_manager": None,
                "csm": "user-carl",
                **{k: h[k] for k in ("score", "band", "signals", "signal_details", "at_risk_since")},
            }
            return httpx.Response(200, json={"items": [item], "count": 1})
        if path == "/churn-warnings/hit-rate":
            return httpx.Response(
                200,
                json={
                    "lookback_days": 180,
                    "evaluated": 10,
                    "true_positives": 3,
                    "false_positives": 1,
                    "false_negatives": 1,
                    "true_negatives": 5,
                    "precision": 0.75,
                    "recall": 0.75,
                    "rules_version": 3,
                },
            )
        if path == "/health/rules" and method == "GET":
            return httpx.Response(200, json={**self.rules, "created_at": None, "created_by": None})
        if path == "/health/rules" and method == "PUT":
            if payload["base"] > 100:
                return httpx.Response(
                    422,
                    json={
                        "error": "validation_error",
                        "message": "invalid input: body.base",
                        "fields": [{"field": "body.base", "message": "at most 100"}],
                    },
                )
            self.rules = {"version": self.rules["version"] + 1, "rules": payload}
            return httpx.Response(200, json={**self.rules, "created_at": None, "created_by": "user-carl"})
        if path == "/commitment-reviews":
            items = list(self.reviews.values())
            return httpx.Response(200, json={"items": items, "count": len(items)})
        if parts[0] == "commitment-reviews" and len(parts) >= 2:
            review = self.reviews[parts[1]]
            if len(parts) == 3 and method == "POST":
                review.update(status="completed", decisions=payload["decisions"])
            return httpx.Response(200, json=review)
        return None

    def _due_renewal(self, a: dict[str, Any], days_left: int) -> dict[str, Any]:
        return {
            "account_id": a["account_id"],
            "account_name": a["name"],
            "tier": a["tier"],
            "account_manager": None,
            "csm": "user-carl",
            "renewal_date": a["term"]["renewal_date"],
            "days_left": days_left,
            "overdue": days_left < 0,
            "value": a["term"],
            "at_risk": 0 <= days_left <= 60,
            "risk_reasons": ["low_health", "open_flags"] if 0 <= days_left <= 60 else [],
        }

    def api(self, method: str, path: str, payload: Any) -> httpx.Response:  # noqa: C901 - a route table
        parts = path.strip("/").split("/")
        extra = self.extras(method, path, payload)
        if extra is not None:
            return extra
        if method == "GET" and path == "/accounts":
            return httpx.Response(200, json={"items": list(self.accounts.values())})
        if method == "GET" and path == "/renewals":
            recorded = {r["account_id"] for r in self.renewals}
            due = [
                self._due_renewal(self.accounts["acc-1"], 15),
                self._due_renewal(self.accounts["acc-2"], -5),
            ]
            items = [d for d in due if d["account_id"] not in recorded]
            return httpx.Response(200, json={"window_days": 90, "items": items, "count": len(items)})
        if method == "GET" and path == "/checkins/due":
            logged = {c["account_id"] for c in self.checkins}
            items = [
                {
                    "account_id": a,
                    "account_name": self.accounts[a]["name"],
                    "tier": "standard",
                    "csm": "user-carl",
                    "due_at": due,
                    "overdue": overdue,
                    "days_overdue": days,
                }
                for a, due, overdue, days in (
                    ("acc-1", "2026-12-09T00:00:00Z", False, 0),
                    ("acc-2", "2026-11-25T00:00:00Z", True, 10),
                )
                if a not in logged
            ]
            return httpx.Response(200, json={"items": items, "count": len(items), "per_csm": {}})
        if method == "GET" and path == "/tickets":
            return httpx.Response(200, json={"items": []})
        if len(parts) >= 2 and parts[0] == "accounts" and parts[1] not in self.accounts:
            return httpx.Response(404, json={"error": "not_found", "message": f"no account {parts[1]}"})
        if method == "GET" and len(parts) == 2:
            return httpx.Response(200, json=self.accounts[parts[1]])
        if len(parts) == 3 and parts[2] == "health":
            current = self.health.get(parts[1])
            keys = ("score", "band", "rules_version", "reasons", "scored_at")
            history = [{k: current[k] for k in keys}] if current else []
            return httpx.Response(200, json={"account_id": parts[1], "current": current, "history": history})
        if len(parts) == 3 and parts[2] == "renewals":
            if method == "GET":
                items = [r for r in self.renewals if r["account_id"] == parts[1]]
                return httpx.Response(200, json={"items": items, "count": len(items)})
            if payload["outcome"] == "churned" and payload.get("new_value"):
                return httpx.Response(
                    422,
                    json={
                        "error": "rule_violation",
                        "message": "a churned renewal has no new term",
                        "details": {"field": "new_value"},
                    },
                )
            record = {
                "account_id": parts[1],
                "due_date": self.accounts[parts[1]]["term"]["renewal_date"],
                "new_term": None,
                **payload,
            }
            self.renewals.append(record)
            return httpx.Response(201, json=record)
        if len(parts) == 3 and parts[2] == "checkins":
            if method == "GET":
                items = [c for c in self.checkins if c["account_id"] == parts[1]]
                return httpx.Response(200, json={"items": items, "count": len(items)})
            record = {"account_id": parts[1], **payload}
            self.checkins.append(record)
            return httpx.Response(201, json=record)
        return httpx.Response(404, json={"error": "not_found", "message": f"no fake for {method} {path}"})


def _period(period: str, resolved: int, csat: float) -> dict[str, Any]:
    figures = {
        "tickets": {"opened": resolved + 2, "resolved": resolved, "sla_attainment": 0.9},
        "csat": {"responses": 4, "average": csat, "satisfied_share": 0.75},
        "nps": {"responses": 3, "promoters": 2, "detractors": 0, "score": 66.7},
        "renewals": {
            "recorded": 2,
            "renewed": 2,
            "downgraded": 0,
            "churned": 0,
            "renewal_rate": 1.0,
            "logo_churn": 0.0,
            "revenue_retention": {"EUR": {"previous": 1000, "gross_retention": 1.0, "net_retention": 1.1}},
        },
        "checkins": {"active_accounts": 4, "covered_accounts": 3, "coverage": 0.75},
        "action_items": {},
    }
    return {"period": period, "start": "", "end": "", "teams": {"all": figures, "enterprise": figures}}


LATENCY = {
    "deal-won": {
        "windows": {"last_day": {"count": 3, "p50": 600.0, "p90": 5400.0, "p99": 7200.0}},
        "pending": 1,
        "oldest_pending_seconds": 9000.0,
    }
}
MARKETING = {
    "channels": {
        "webinar": {
            "captured": 12,
            "qualified": 6,
            "accepted": 3,
            "rejected": 2,
            "recycled": 1,
            "acceptance_rate": 0.5,
            "verdict_reasons": {"no_budget": 2, "bad_timing": 1},
        }
    },
    "campaigns": {
        "spring-launch": {
            "captured": 5,
            "qualified": 2,
            "accepted": 1,
            "rejected": 1,
            "recycled": 0,
            "acceptance_rate": 0.5,
            "verdict_reasons": {"no_budget": 1},
        }
    },
}


def _item(item_id: str, department: str, title: str) -> dict[str, Any]:
    return {
        "item_id": item_id,
        "department": department,
        "title": title,
        "details": None,
        "status": "open",
        "assignee": None,
        "due_at": "2026-12-20T17:00:00Z",
        "overdue": False,
        "account_id": "acc-1",
        "account_name": "Globex",
        "source": {"kind": "ticket", "record_id": "t-1", "excerpt": "SSO keeps failing"},
        "raised_by": "user-carl",
        "raised_at": "2026-12-01T10:00:00Z",
        "received_at": "2026-12-01T10:00:01Z",
        "first_action_at": None,
        "closed_at": None,
        "reason": None,
        "escalated_at": None,
        "escalated_to": None,
        "history": [],
    }


@dataclass
class FakeQueues:
    """Each department's /action-queue (members and managers as the gateway's table says)."""

    items: dict[str, dict[str, dict[str, Any]]] = field(
        default_factory=lambda: {
            "/api/sales/action-queue": {"si-1": _item("si-1", "sales", "Offer SSO in the next quote")},
            "/api/leads/action-queue": {"mi-1": _item("mi-1", "marketing", "Fix the pricing page")},
            "/api/service-desk/action-queue": {"ci-1": _item("ci-1", "customer-success", "Call the sponsor")},
        }
    )
    members = {
        "/api/sales/action-queue": {"sales_rep", "sales_manager", "admin"},
        "/api/leads/action-queue": {"marketing", "marketing_manager", "admin"},
        "/api/service-desk/action-queue": {
            "service_rep",
            "customer_success_manager",
            "service_lead",
            "admin",
        },
    }

    def api(self, method: str, path: str, payload: Any, claims: dict[str, Any]) -> httpx.Response:
        if path == "/api/sales/reps":
            reps = [{"user_id": "user-rita", "name": "Rita", "active": True}]
            return httpx.Response(200, json={"reps": reps, "rotation": ["user-rita"], "next_up": "user-rita"})
        if path == "/api/service-desk/csms":
            return httpx.Response(
                200, json={"csms": [{"user_id": "user-carl", "name": "Carl", "active": True}]}
            )
        base = path[: path.index("/action-queue") + len("/action-queue")]
        if not set(claims["roles"]) & self.members[base]:
            return httpx.Response(403, json={"error": "forbidden", "message": "not your department's queue"})
        queue = self.items[base]
        rest = path[len(base) :].strip("/").split("/")
        if method == "GET":
            items = list(queue.values())
            return httpx.Response(200, json={"view": "open", "items": items, "count": len(items)})
        item = queue[rest[0]]
        step = rest[1]
        if step == "assign" and not set(claims["roles"]) & {"sales_manager", "admin"}:
            return httpx.Response(403, json={"error": "forbidden", "message": "managers assign items"})
        if step == "complete" and item["status"] == "done":
            return httpx.Response(409, json={"error": "conflict", "message": "the item is already done"})
        status = {"accept": "accepted", "complete": "done", "decline": "declined", "assign": item["status"]}[
            step
        ]
        item["status"] = status
        item["assignee"] = (payload or {}).get("assignee", item["assignee"])
        item["history"].append(
            {"status": status, "by": claims["sub"], "at": "2026-12-05T09:00:00Z", **(payload or {})}
        )
        return httpx.Response(200, json=item)


@dataclass
class FakeReports:
    """Analytics' KPI routes and every service's audit log, with the gateway's role checks."""

    audit: dict[str, list[dict[str, Any]]] = field(
        default_factory=lambda: {
            "/audit": [_entry("g-1", "2026-12-03T10:00:00Z", "gateway", "users", "u-9")],
            "/api/sales/audit": [_entry("s-1", "2026-12-04T10:00:00Z", "sales", "opportunities", "opp-1")],
            "/api/leads/audit": [_entry("l-1", "2026-12-02T10:00:00Z", "leads", "leads", "lead-1")],
            "/api/service-desk/audit": [],
        }
    )

    series_asked: list[dict[str, str]] = field(default_factory=list)

    def analytics(self, path: str, params: dict[str, str]) -> httpx.Response:
        """The dashboard's summary and the handoff latency over time (two handoffs)."""
        if path.endswith("/summary"):
            stages = dict.fromkeys(("captured", "qualified", "accepted", "won", "onboarded"), 1)
            latency = {"count": 1, "p50": 0.01, "p95": 0.02, "p99": 0.03}
            return httpx.Response(
                200,
                json={
                    "funnel": {
                        "stages": stages,
                        "conversion": dict.fromkeys(
                            (
                                "captured_to_qualified",
                                "qualified_to_accepted",
                                "accepted_to_won",
                                "won_to_onboarded",
                                "captured_to_won",
                            ),
                            1.0,
                        ),
                        "updated_at": "2026-12-05T09:00:00Z",
                    },
                    "channels": {"web": stages},
                    "handoffs": {"lead-qualified": {"transport": latency, "business": latency}},
                    "updated_at": "2026-12-05T09:00:00Z",
                },
            )
        self.series_asked.append(dict(params))
        day = {"count": 3, "p50": 0.004, "p90": 0.5}
        handoffs = {
            "lead-qualified": {
                "transport": [{**day, "day": "2026-12-03"}, {**day, "day": "2026-12-05", "count": 7}],
                "business": [{"day": "2026-12-04", "count": 2, "p50": 5400.0, "p90": 7200.0}],
            },
            "lead-verdict": {"transport": [{**day, "day": "2026-12-05", "p50": 0.02}], "business": None},
        }
        return httpx.Response(200, json={"days": int(params.get("days", 30)), "handoffs": handoffs})

    def api(self, path: str, params: dict[str, str], claims: dict[str, Any]) -> httpx.Response:
        roles = set(claims["roles"])
        if path.startswith("/api/analytics/"):
            allowed = {"/api/analytics/kpis": {"analyst", "executive", "admin"}}.get(path)
            if allowed is not None and not roles & allowed:
                return httpx.Response(403, json={"error": "forbidden", "message": "not for your role"})
            periods = [_period("2026-12", 7, 4.5), _period("2026-11", 5, 4.0)]
            body = {
                "computed_at": "2026-12-05T08:00:00Z",
                "period_kind": params.get("period", "month"),
                "periods": periods,
                "action_items": {"marketing": {"open": 2, "overdue": 1, "escalated": 0}},
                "business_latency": LATENCY,
                "marketing": MARKETING,
            }
            if path.endswith("/service"):
                body["action_items"] = {"open": 4, "overdue": 2, "escalated": 1}
            if path.endswith("/marketing"):
                body = {**body, "action_items": {"open": 2, "overdue": 1, "escalated": 0}}
            return httpx.Response(200, json=body)
        if not roles & {"auditor", "admin"}:
            return httpx.Response(403, json={"error": "forbidden", "message": "auditors and admins only"})
        if params.get("record_id") and not params.get("record_type"):
            return httpx.Response(
                422,
                json={
                    "error": "rule_violation",
                    "message": "invalid input: query.record_id needs query.record_type",
                    "details": {"field": "query.record_id"},
                },
            )
        if path.endswith("/export"):
            return httpx.Response(
                200, text="id,at\r\ns-1,2026-12-04\r\n", headers={"content-type": "text/csv"}
            )
        items = [e for e in self.audit[path] if params.get("user_id") in (None, e["actor"]["user_id"])]
        return httpx.Response(200, json={"items": items, "next_cursor": "c-2" if items else None})


def _entry(entry_id: str, at: str, service: str, record_type: str, record_id: str) -> dict[str, Any]:
    return {
        "id": entry_id,
        "at": at,
        "service": service,
        "actor": {"type": "user", "user_id": "user-rita", "username": "rita", "roles": ["sales_rep"]},
        "action": "update",
        "operation": "POST /opportunities/x/stage",
        "record": {"type": record_type, "id": record_id},
        "changes": [{"field": "stage", "before": "proposal", "after": "won"}],
        "request_id": None,
        "correlation_id": None,
    }


@dataclass
class FakeSales:
    """The sales manager's configuration: the pipeline (validated like the API) and response times."""

    pipeline: dict[str, Any] = field(
        default_factory=lambda: {
            "version": 1,
            "stages": [
                {"name": "qualification", "probability": 0.1, "required_fields": [], "closed": False},
                {"name": "proposal", "probability": 0.5, "required_fields": ["amount"], "closed": False},
                {
                    "name": "won",
                    "probability": 1.0,
                    "required_fields": ["amount", "products", "commitments"],
                    "closed": True,
                },
                {"name": "lost", "probability": 0.0, "required_fields": ["lost_reason"], "closed": True},
            ],
            "updated_at": None,
            "updated_by": None,
        }
    )
    response_times: dict[str, Any] = field(default_factory=lambda: {"reps": [], "truncated": False})
    response_days: list[str] = field(default_factory=list)  # the windows asked for
    puts: list[Any] = field(default_factory=list)
    moves: list[tuple[str, Any]] = field(default_factory=list)  # (opportunity id, body)
    opportunities: list[dict[str, Any]] = field(
        default_factory=lambda: [
            {
                "id": "opp-1", "account_name": "Globex", "stage": "qualification", "status": "open",
                "amount": None, "currency": "EUR", "owner": "user-rita", "origin": "lead", "flagged": False,
                "products": [], "commitments": [], "fields": {},
            },
            {
                "id": "opp-2", "account_name": "Initech", "stage": "won", "status": "won",
                "amount": 900.0, "currency": "EUR", "owner": "user-rita", "origin": "lead", "flagged": False,
                "products": [], "commitments": [], "fields": {},
            },
        ]
    )  # fmt: skip

    def api(self, method: str, path: str, payload: Any, params: dict[str, str]) -> httpx.Response:
        if path == "/api/sales/opportunities":
            items = self.opportunities
            return httpx.Response(200, json={"items": items, "total": len(items), "limit": 200, "offset": 0})
        if path.startswith("/api/sales/opportunities/") and path.endswith("/stage"):
            self.moves.append((path.split("/")[4], payload))
            return httpx.Response(200, json={})
        if path == "/api/sales/config":
            return httpx.Response(
                200, json={"lead_response_sla_minutes": 60, "updated_at": None, "updated_by": None}
            )
        if path == "/api/sales/reps/response-times":
            self.response_days.append(params.get("days", ""))
            return httpx.Response(200, json={"days": int(params.get("days", 30)), **self.response_times})
        if method == "GET":
            return httpx.Response(200, json=self.pipeline)
        self.puts.append(payload)
        problems = [
            f"stage {s['name']!r} must require ['amount'] (its handoff needs them)"
            for s in payload["stages"]
            if s["name"] == "won" and "amount" not in s["required_fields"]
        ]
        if problems:
            message = "invalid pipeline: " + "; ".join(problems)
            return httpx.Response(
                422, json={"error": "rule_violation", "message": message, "details": {"problems": problems}}
            )
        stages = [{**s, "closed": s["name"] in ("won", "lost")} for s in payload["stages"]]
        self.pipeline = {**self.pipeline, "version": self.pipeline["version"] + 1, "stages": stages}
        return httpx.Response(200, json=self.pipeline)


@pytest.fixture
def fake_gateway() -> FakeGateway:
    return FakeGateway()


@pytest.fixture
def console_settings(tmp_path: Path) -> Callable[..., ConsoleSettings]:
    def build(**env: Any) -> ConsoleSettings:
        key = tmp_path / "session.key"
        key.write_bytes(b"k" * 48)
        values = {
            "CRM_ENV": "test",
            "CRM_CONSOLE_SESSION_KEY_FILE": str(key),
            "CRM_CONSOLE_GATEWAY_URL": "http://gateway.test",
            **env,
        }
        return ConsoleSettings.model_validate(values)

    return build


@pytest.fixture
async def console(
    fake_gateway: FakeGateway, console_settings: Callable[..., ConsoleSettings]
) -> AsyncIterator[httpx.AsyncClient]:
    async def answer(request: httpx.Request) -> httpx.Response:
        # Like a network, each call gives way to others in flight (pages that call concurrently).
        await asyncio.sleep(0)
        return fake_gateway.handle(request)

    app = build_app(console_settings(), transport=httpx.MockTransport(answer))
    # https: the cookies are Secure outside local, so the client only sends them over TLS.
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="https://console.test"
    ) as c:
        yield c
