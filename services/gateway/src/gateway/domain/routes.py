"""Which services the gateway fronts, and the coarse role check per route.

The table is declarative: ``(service, methods, path pattern) -> allowed roles``,
first match wins. **Deny by default**: a request that matches no rule is refused
(403), whoever sends it, so a route added to a service is unreachable through the
gateway until it gets a rule here (``tests/contract/test_role_route_matrix.py`` fails
until then). The services check the token and roles again. Patterns are matched
against the *normalised* path below the service prefix
(``/api/leads/scoring-rules`` -> ``/scoring-rules``):

- a literal segment matches itself (case-insensitive),
- ``*`` matches exactly one segment,
- ``a|b|c`` matches one of the literals,
- ``**`` (last segment only) matches zero or more segments.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from urllib.parse import unquote

from crm_platform.auth import Role

LEADS = "leads"
SALES = "sales"
SERVICE_DESK = "service-desk"
ANALYTICS = "analytics"
SERVICES: tuple[str, ...] = (LEADS, SALES, SERVICE_DESK, ANALYTICS)
# The web console is an upstream too, but not an API: it is served at / (gateway.api.console).
CONSOLE = "console"

READ = frozenset({"GET", "HEAD"})
WRITE = frozenset({"POST", "PUT", "PATCH", "DELETE"})
ANY: frozenset[str] = frozenset()  # empty = every method

MARKETING_ROLES = frozenset({Role.MARKETING, Role.MARKETING_MANAGER, Role.ADMIN})
SALES_ROLES = frozenset({Role.SALES_REP, Role.SALES_MANAGER, Role.ADMIN})
SERVICE_ROLES = frozenset({Role.SERVICE_REP, Role.CUSTOMER_SUCCESS_MANAGER, Role.SERVICE_LEAD, Role.ADMIN})
LEAD_READERS = MARKETING_ROLES | SALES_ROLES | {Role.ANALYST}
ANALYTICS_READERS = frozenset({Role.ANALYST, Role.SALES_MANAGER, Role.EXECUTIVE, Role.ADMIN})
# Every service's audit log (GET /audit, /audit/export): admins, and auditors who read nothing else.
AUDIT_READERS = frozenset({Role.ADMIN, Role.AUDITOR})
# Every KPI, without records' personal data: analysts, executives (read-only) and admins.
KPI_READERS = frozenset({Role.ANALYST, Role.EXECUTIVE, Role.ADMIN})


# Uploads: forwarded as a stream (never read whole), up to CRM_MAX_UPLOAD_BYTES.
UPLOAD_PATHS = re.compile(r"^/api/leads/imports/[^/]+/file$")


def is_upload(path: str) -> bool:
    """A request whose body the gateway streams to the service (an import's file)."""
    return UPLOAD_PATHS.match(path) is not None


class UnsafePath(ValueError):
    """A path the gateway refuses to forward (dot segments, control characters)."""


def normalize_path(path: str) -> str:
    """The canonical form used for policy matching: decoded once (as the services decode
    it), no empty or trailing segments.

    ``.`` and ``..`` segments are refused rather than resolved, and so are a literal
    ``#`` or ``?`` (never part of a path on the wire: an HTTP client would cut the
    path there, so it would reach another route than the one matched), so no
    spelling of a path can match one rule at the gateway and reach another upstream.
    """
    if "#" in path or "?" in path:
        raise UnsafePath("'#' and '?' are not allowed in a path (percent-encode them)")
    decoded = unquote(path)
    if any(ord(c) < 0x20 or c == "\x7f" for c in decoded):
        raise UnsafePath("control characters in path")
    segments = [s for s in decoded.split("/") if s]
    if any(s in (".", "..") for s in segments):
        raise UnsafePath("'.' and '..' path segments are not allowed")
    return "/" + "/".join(segments)


def _compile(pattern: str) -> re.Pattern[str]:
    if not pattern.startswith("/"):
        raise ValueError(f"pattern must start with '/': {pattern!r}")
    segments = [s for s in pattern.split("/") if s]
    parts: list[str] = []
    for i, seg in enumerate(segments):
        if seg == "**":
            if i != len(segments) - 1:
                raise ValueError(f"'**' must be the last segment: {pattern!r}")
            parts.append("(?:/[^/]+)*")
        elif seg == "*":
            parts.append("/[^/]+")
        elif "*" in seg:
            raise ValueError(f"'*' must be a whole segment: {pattern!r}")
        else:
            options = seg.split("|")
            if any(not o for o in options):
                raise ValueError(f"empty alternative in {pattern!r}")
            parts.append("/(?:" + "|".join(re.escape(o) for o in options) + ")")
    body = "".join(parts)
    return re.compile(f"^{body}$", re.IGNORECASE)


@dataclass(frozen=True)
class RouteRule:
    service: str
    methods: frozenset[str]
    pattern: str
    roles: frozenset[Role]
    why: str = ""
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.service not in SERVICES:
            raise ValueError(f"unknown service {self.service!r}")
        if not self.roles:
            raise ValueError("a rule must allow at least one role")
        object.__setattr__(self, "regex", _compile(self.pattern))

    def matches(self, service: str, method: str, path: str) -> bool:
        if service != self.service:
            return False
        if self.methods and method.upper() not in self.methods:
            return False
        return bool(self.regex.match("" if path == "/" else path))

    def describe_methods(self) -> str:
        order = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        return ", ".join(m for m in order if m in self.methods) if self.methods else "any"


def rule(
    service: str, methods: Iterable[str], pattern: str, roles: Iterable[Role], why: str = ""
) -> RouteRule:
    return RouteRule(service, frozenset(m.upper() for m in methods), pattern, frozenset(roles), why)


SALES_LEADS = frozenset({Role.SALES_MANAGER, Role.ADMIN})
CSM_LEADS = frozenset({Role.CUSTOMER_SUCCESS_MANAGER, Role.SERVICE_LEAD, Role.ADMIN})
ADMINS = frozenset({Role.ADMIN})
MARKETING_LEADS = frozenset({Role.MARKETING_MANAGER, Role.ADMIN})
SERVICE_LEADS = frozenset({Role.SERVICE_LEAD, Role.ADMIN})
SALES_READERS = SALES_ROLES | {Role.ANALYST}

# First match wins: list the specific rules before the broad ones of a service.
ROUTE_TABLE: tuple[RouteRule, ...] = (
    # every department's audit log (crm_platform.audit_api): read-only, admins and auditors
    rule(LEADS, READ, "/audit/**", AUDIT_READERS, "marketing's audit log"),
    rule(SALES, READ, "/audit/**", AUDIT_READERS, "sales' audit log"),
    rule(SERVICE_DESK, READ, "/audit/**", AUDIT_READERS, "customer service and success' audit log"),
    # leads (marketing)
    rule(LEADS, WRITE, "/scoring-rules/**", MARKETING_ROLES, "scoring rules are marketing's"),
    rule(
        LEADS,
        READ,
        "/leads/export",
        MARKETING_ROLES,
        "the whole list's personal data leaves with marketing only",
    ),
    rule(LEADS, ANY, "/imports|import-mappings/**", MARKETING_ROLES, "importing leads is marketing's"),
    rule(LEADS, WRITE, "/leads/**", MARKETING_ROLES, "capture and behaviour tracking are marketing's"),
    rule(LEADS, READ, "/leads|scoring-rules/**", LEAD_READERS, "sales and analysts read leads"),
    rule(LEADS, {"POST"}, "/action-queue/*/assign", MARKETING_LEADS, "the manager routes action items"),
    rule(LEADS, ANY, "/action-queue/**", MARKETING_ROLES, "marketing's queue of action items"),
    # sales
    rule(SALES, {"POST"}, "/inbox/*/assign", SALES_LEADS, "managers route handed-off leads"),
    rule(SALES, {"POST"}, "/inbox/*/accept|reject|recycle", SALES_ROLES, "the verdict on a handed-off lead"),
    rule(SALES, READ, "/inbox/**", SALES_ROLES, "the inbox of handed-off leads"),
    rule(SALES, ANY, "/opportunities/**", SALES_ROLES, "deals are sales' own"),
    rule(SALES, ANY, "/accounts|contacts/**", SALES_ROLES, "accounts and contacts sales works itself"),
    rule(SALES, {"POST"}, "/action-queue/*/assign", SALES_LEADS, "the manager routes action items"),
    rule(SALES, ANY, "/action-queue/**", SALES_ROLES, "sales' queue of action items"),
    rule(SALES, READ, "/forecast|pipeline", SALES_READERS, "analysts read the forecast and stages"),
    rule(SALES, READ, "/reps|config/**", SALES_ROLES, "the team and its settings"),
    rule(SALES, WRITE, "/reps|config|pipeline/**", SALES_LEADS, "managers run the team"),
    # service desk (customer service and customer success)
    rule(
        SERVICE_DESK,
        {"PUT"},
        "/accounts/*/csm|tier|account-manager",
        CSM_LEADS,
        "customer success assigns CSMs, account managers and tiers",
    ),
    rule(SERVICE_DESK, WRITE, "/success/**", ADMINS, "customer success settings are the administrator's"),
    rule(SERVICE_DESK, WRITE, "/health/rules", CSM_LEADS, "customer success leads version the health rules"),
    rule(SERVICE_DESK, WRITE, "/csms/**", CSM_LEADS, "customer success runs its roster"),
    rule(SERVICE_DESK, WRITE, "/config/**", ADMINS, "SLA settings are the administrator's"),
    rule(
        SERVICE_DESK,
        ANY,
        "/commitment-reviews/**",
        CSM_LEADS,
        "customer success reviews what sales promised before a deal can be won",
    ),
    rule(SERVICE_DESK, {"POST"}, "/action-queue/*/assign", SERVICE_LEADS, "the team lead routes items"),
    rule(
        SERVICE_DESK,
        ANY,
        "/action-items|action-queue/**",
        SERVICE_ROLES,
        "voice of the customer: raise action items, work customer success' own queue",
    ),
    rule(
        SERVICE_DESK,
        ANY,
        "/accounts|tickets|csms|config|success|renewals|checkins|health|churn-warnings|surveys/**",
        SERVICE_ROLES,
        "cases, accounts and commitments",
    ),
    # analytics
    rule(ANALYTICS, READ, "/funnel|channels|handoffs|summary/**", ANALYTICS_READERS, "reports"),
    rule(ANALYTICS, READ, "/kpis/service", SERVICE_ROLES | KPI_READERS, "customer service/success KPIs"),
    rule(ANALYTICS, READ, "/kpis/marketing", MARKETING_ROLES | KPI_READERS, "marketing's channel figures"),
    rule(ANALYTICS, READ, "/kpis", KPI_READERS, "every KPI, no personal data"),
)


@dataclass(frozen=True)
class PublicRoute:
    """A service route anyone may call without a token (``/public/...`` on the service)."""

    service: str
    methods: frozenset[str]
    pattern: str
    why: str
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.service not in SERVICES:
            raise ValueError(f"unknown service {self.service!r}")
        if not self.pattern.startswith("/public/"):
            raise ValueError(f"a public route lives under /public/: {self.pattern!r}")
        object.__setattr__(self, "regex", _compile(self.pattern))

    def matches(self, service: str, method: str, path: str) -> bool:
        return service == self.service and method.upper() in self.methods and bool(self.regex.match(path))


# Deny by default here too: only these service routes are reachable without a token, at
# /public/<service>/<rest> (forwarded to the service's /public/<rest>, credentials stripped).
PUBLIC_ROUTES: tuple[PublicRoute, ...] = (
    PublicRoute(
        SERVICE_DESK,
        frozenset({"GET", "POST"}),
        "/public/surveys/*",
        "customers answer CSAT/NPS survey links (signed, single-use, expiring) without a login",
    ),
)


def find_public_route(
    service: str, method: str, path: str, table: tuple[PublicRoute, ...] = PUBLIC_ROUTES
) -> PublicRoute | None:
    """The public route matching; ``path`` (the service's, starting ``/public/``) normalised here."""
    normalised = normalize_path(path)
    return next((r for r in table if r.matches(service, method, normalised)), None)


@dataclass(frozen=True)
class Decision:
    allowed: bool
    rule: RouteRule | None  # None: no rule matches, so the route is refused

    @property
    def required_roles(self) -> frozenset[Role] | None:
        return self.rule.roles if self.rule is not None else None


def find_rule(
    service: str, method: str, path: str, table: tuple[RouteRule, ...] = ROUTE_TABLE
) -> RouteRule | None:
    """The first rule matching; ``path`` must already be normalised."""
    for r in table:
        if r.matches(service, method, path):
            return r
    return None


def authorize(
    roles: Iterable[str],
    service: str,
    method: str,
    path: str,
    table: tuple[RouteRule, ...] = ROUTE_TABLE,
) -> Decision:
    """May a user with ``roles`` call ``method path`` on ``service``? ``path`` is normalised here."""
    matched = find_rule(service, method, normalize_path(path), table)
    if matched is None:
        return Decision(False, None)
    return Decision(bool(set(roles) & matched.roles), matched)
