"""Permissions (issue 9): the route catalogue every department shares, and the role -> permission
policy an administrator edits.

**Catalogue.** Every route a user can call is covered by one rule
``(service, methods, path pattern) -> permission`` (first match wins). The gateway's route
table for the services it forwards to (:data:`ROUTE_TABLE`) and the gateway's own
administration routes (:data:`GATEWAY_TABLE`) are that catalogue. **Deny by default**: a
request that matches no rule is refused (403), whoever sends it, so a route added to a
service is unreachable through the gateway until it gets a rule here
(``tests/contract/test_role_route_matrix.py`` fails until then). Patterns are matched against
the *normalised* path below the service prefix (``/api/leads/scoring-rules`` ->
``/scoring-rules``):

- a literal segment matches itself (case-insensitive),
- ``*`` matches exactly one segment,
- ``a|b|c`` matches one of the literals,
- ``**`` (last segment only) matches zero or more segments.

**Policy.** Which roles hold which permission is data (:class:`Policy`), not code: the
defaults (:data:`DEFAULT_POLICY`, version 0) are each rule's ``roles`` below, exactly the
table as it was before permissions became editable; an administrator changes a role's
permissions at the gateway (``PUT /permissions/roles/{role}``), the gateway stores the new
version and publishes it (``permissions.changed``), and every department keeps the latest
version it has received in its own database (:mod:`crm_platform.permission_policy`). The
gateway checks the policy before forwarding, and each service checks it again on every
``require_roles`` (the route's permission decides which roles pass). Pure: no I/O here.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import unquote

from crm_platform.errors import Conflict, RuleViolation
from crm_platform.roles import Role

LEADS = "leads"
SALES = "sales"
SERVICE_DESK = "service-desk"
ANALYTICS = "analytics"
SERVICES: tuple[str, ...] = (LEADS, SALES, SERVICE_DESK, ANALYTICS)
# The gateway's own administration routes (users, permissions, its audit log) are permissions too.
GATEWAY = "gateway"
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


# Uploads: forwarded as a stream (never read whole), up to CRM_MAX_UPLOAD_BYTES: marketing's
# lead imports and sales' contact imports (crm_platform.imports).
UPLOAD_PATHS = re.compile(r"^/api/(leads/imports|sales/contacts/imports)/[^/]+/file$")


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


def compile_pattern(pattern: str) -> re.Pattern[str]:
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
    roles: frozenset[Role]  # the roles holding ``permission`` by default
    why: str = ""
    permission: str = ""  # the name an administrator grants; derived from the rule when empty
    regex: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.service not in (*SERVICES, GATEWAY):
            raise ValueError(f"unknown service {self.service!r}")
        if not self.roles:
            raise ValueError("a rule must allow at least one role")
        object.__setattr__(self, "regex", compile_pattern(self.pattern))
        if not self.permission:
            object.__setattr__(self, "permission", _derived_permission(self))
        if not PERMISSION_NAME.match(self.permission):
            raise ValueError(f"bad permission name {self.permission!r}")

    def matches(self, service: str, method: str, path: str) -> bool:
        if service != self.service:
            return False
        if self.methods and method.upper() not in self.methods:
            return False
        return bool(self.regex.match("" if path == "/" else path))

    def describe_methods(self) -> str:
        order = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
        return ", ".join(m for m in order if m in self.methods) if self.methods else "any"


PERMISSION_NAME = re.compile(r"^[a-z][a-z0-9-]*(\.[a-z0-9][a-z0-9-]*)+$")


def _derived_permission(r: RouteRule) -> str:
    words = re.sub(r"[^a-z0-9]+", "-", r.pattern.lower()).strip("-") or "root"
    kind = (
        "read" if r.methods and r.methods <= READ else "write" if r.methods and r.methods <= WRITE else "any"
    )
    return f"{r.service}.{words}.{kind}"


def rule(
    service: str,
    methods: Iterable[str],
    pattern: str,
    roles: Iterable[Role],
    why: str = "",
    permission: str = "",
) -> RouteRule:
    methods = frozenset(m.upper() for m in methods)
    return RouteRule(service, methods, pattern, frozenset(roles), why, permission)


SALES_LEADS = frozenset({Role.SALES_MANAGER, Role.ADMIN})
CSM_LEADS = frozenset({Role.CUSTOMER_SUCCESS_MANAGER, Role.SERVICE_LEAD, Role.ADMIN})
ADMINS = frozenset({Role.ADMIN})
MARKETING_LEADS = frozenset({Role.MARKETING_MANAGER, Role.ADMIN})
SERVICE_LEADS = frozenset({Role.SERVICE_LEAD, Role.ADMIN})
SALES_READERS = SALES_ROLES | {Role.ANALYST}

# First match wins: list the specific rules before the broad ones of a service.
ROUTE_TABLE: tuple[RouteRule, ...] = (
    # every department's audit log (crm_platform.audit_api): read-only, admins and auditors
    rule(LEADS, READ, "/audit/**", AUDIT_READERS, "marketing's audit log", permission="leads.audit.read"),
    rule(SALES, READ, "/audit/**", AUDIT_READERS, "sales' audit log", permission="sales.audit.read"),
    rule(
        SERVICE_DESK,
        READ,
        "/audit/**",
        AUDIT_READERS,
        "customer service and success' audit log",
        permission="service-desk.audit.read",
    ),
    # every department's custom field definitions (crm_platform.custom_fields_api): its roles
    # read them (forms need them), administrators change them
    rule(
        LEADS,
        WRITE,
        "/custom-fields/**",
        ADMINS,
        "administrators define custom fields",
        permission="leads.custom-fields.write",
    ),
    rule(
        LEADS,
        READ,
        "/custom-fields/**",
        LEAD_READERS,
        "whoever reads leads reads their custom fields' definitions",
        permission="leads.custom-fields.read",
    ),
    rule(
        SALES,
        WRITE,
        "/custom-fields/**",
        ADMINS,
        "administrators define custom fields",
        permission="sales.custom-fields.write",
    ),
    rule(
        SALES,
        READ,
        "/custom-fields/**",
        SALES_ROLES,
        "sales reads its records' custom fields' definitions",
        permission="sales.custom-fields.read",
    ),
    # leads (marketing)
    rule(
        LEADS,
        WRITE,
        "/scoring-rules/**",
        MARKETING_ROLES,
        "scoring rules are marketing's",
        permission="leads.scoring-rules.write",
    ),
    rule(
        LEADS,
        READ,
        "/leads/export",
        MARKETING_ROLES,
        "the whole list's personal data leaves with marketing only",
        permission="leads.leads.export",
    ),
    rule(
        LEADS,
        ANY,
        "/imports|import-mappings/**",
        MARKETING_ROLES,
        "importing leads is marketing's",
        permission="leads.imports.manage",
    ),
    rule(
        LEADS,
        WRITE,
        "/leads/**",
        MARKETING_ROLES,
        "capture and behaviour tracking are marketing's",
        permission="leads.leads.write",
    ),
    rule(
        LEADS,
        READ,
        "/leads|scoring-rules/**",
        LEAD_READERS,
        "sales and analysts read leads",
        permission="leads.leads.read",
    ),
    rule(
        LEADS,
        {"POST"},
        "/action-queue/*/assign",
        MARKETING_LEADS,
        "the manager routes action items",
        permission="leads.action-queue.assign",
    ),
    rule(
        LEADS,
        ANY,
        "/action-queue/**",
        MARKETING_ROLES,
        "marketing's queue of action items",
        permission="leads.action-queue.work",
    ),
    # sales
    rule(
        SALES,
        {"POST"},
        "/inbox/*/assign",
        SALES_LEADS,
        "managers route handed-off leads",
        permission="sales.inbox.assign",
    ),
    rule(
        SALES,
        {"POST"},
        "/inbox/*/accept|reject|recycle",
        SALES_ROLES,
        "the verdict on a handed-off lead",
        permission="sales.inbox.decide",
    ),
    rule(
        SALES, READ, "/inbox/**", SALES_ROLES, "the inbox of handed-off leads", permission="sales.inbox.read"
    ),
    rule(
        SALES,
        ANY,
        "/opportunities/**",
        SALES_ROLES,
        "deals are sales' own",
        permission="sales.opportunities.manage",
    ),
    rule(
        SALES,
        ANY,
        "/accounts|contacts/**",
        SALES_ROLES,
        "accounts and contacts sales works itself",
        permission="sales.accounts.manage",
    ),
    rule(
        SALES,
        {"POST"},
        "/action-queue/*/assign",
        SALES_LEADS,
        "the manager routes action items",
        permission="sales.action-queue.assign",
    ),
    rule(
        SALES,
        ANY,
        "/action-queue/**",
        SALES_ROLES,
        "sales' queue of action items",
        permission="sales.action-queue.work",
    ),
    rule(
        SALES,
        READ,
        "/forecast|pipeline",
        SALES_READERS,
        "analysts read the forecast and stages",
        permission="sales.forecast.read",
    ),
    rule(
        SALES,
        READ,
        "/reps/response-times",
        SALES_LEADS,
        "managers read their reps' response times",
        permission="sales.team.response-times",
    ),
    rule(
        SALES, READ, "/reps|config/**", SALES_ROLES, "the team and its settings", permission="sales.team.read"
    ),
    rule(
        SALES,
        WRITE,
        "/reps|config|pipeline/**",
        SALES_LEADS,
        "managers run the team",
        permission="sales.team.manage",
    ),
    # service desk (customer service and customer success)
    rule(
        SERVICE_DESK,
        {"PUT"},
        "/accounts/*/csm|tier|account-manager",
        CSM_LEADS,
        "customer success assigns CSMs, account managers and tiers",
        permission="service-desk.accounts.assign",
    ),
    rule(
        SERVICE_DESK,
        WRITE,
        "/success/**",
        ADMINS,
        "customer success settings are the administrator's",
        permission="service-desk.success-settings.manage",
    ),
    rule(
        SERVICE_DESK,
        WRITE,
        "/health/rules",
        CSM_LEADS,
        "customer success leads version the health rules",
        permission="service-desk.health-rules.manage",
    ),
    rule(
        SERVICE_DESK,
        WRITE,
        "/csms/**",
        CSM_LEADS,
        "customer success runs its roster",
        permission="service-desk.csms.manage",
    ),
    rule(
        SERVICE_DESK,
        WRITE,
        "/config/**",
        ADMINS,
        "SLA settings are the administrator's",
        permission="service-desk.sla-settings.manage",
    ),
    rule(
        SERVICE_DESK,
        ANY,
        "/commitment-reviews/**",
        CSM_LEADS,
        "customer success reviews what sales promised before a deal can be won",
        permission="service-desk.commitment-reviews.manage",
    ),
    rule(
        SERVICE_DESK,
        {"POST"},
        "/action-queue/*/assign",
        SERVICE_LEADS,
        "the team lead routes items",
        permission="service-desk.action-queue.assign",
    ),
    rule(
        SERVICE_DESK,
        ANY,
        "/action-items|action-queue/**",
        SERVICE_ROLES,
        "voice of the customer: raise action items, work customer success' own queue",
        permission="service-desk.action-items.work",
    ),
    rule(
        SERVICE_DESK,
        WRITE,
        "/custom-fields/**",
        ADMINS,
        "administrators define custom fields",
        permission="service-desk.custom-fields.write",
    ),
    rule(
        SERVICE_DESK,
        READ,
        "/custom-fields/**",
        SERVICE_ROLES,
        "the service desk reads its tickets' custom fields' definitions",
        permission="service-desk.custom-fields.read",
    ),
    rule(
        SERVICE_DESK,
        ANY,
        "/accounts|tickets|csms|config|success|renewals|checkins|health|churn-warnings|surveys/**",
        SERVICE_ROLES,
        "cases, accounts and commitments",
        permission="service-desk.cases.work",
    ),
    # analytics
    rule(
        ANALYTICS,
        READ,
        "/funnel|channels|handoffs|summary/**",
        ANALYTICS_READERS,
        "reports",
        permission="analytics.reports.read",
    ),
    rule(
        ANALYTICS,
        READ,
        "/kpis/service",
        SERVICE_ROLES | KPI_READERS,
        "customer service/success KPIs",
        permission="analytics.kpis-service.read",
    ),
    rule(
        ANALYTICS,
        READ,
        "/kpis/marketing",
        MARKETING_ROLES | KPI_READERS,
        "marketing's channel figures",
        permission="analytics.kpis-marketing.read",
    ),
    rule(
        ANALYTICS, READ, "/kpis", KPI_READERS, "every KPI, no personal data", permission="analytics.kpis.read"
    ),
)


# The gateway's own routes that are not login or documentation: administration and audit.
GATEWAY_TABLE: tuple[RouteRule, ...] = (
    rule(
        GATEWAY, ANY, "/users/**", ADMINS, "administrators manage accounts", permission="gateway.users.manage"
    ),
    rule(
        GATEWAY,
        READ,
        "/permissions/**",
        AUDIT_READERS,
        "who may do what: administrators and auditors read the policy",
        permission="gateway.permissions.read",
    ),
    rule(
        GATEWAY,
        WRITE,
        "/permissions/**",
        ADMINS,
        "administrators change which role holds which permission",
        permission="gateway.permissions.manage",
    ),
    rule(
        GATEWAY, READ, "/audit/**", AUDIT_READERS, "the gateway's audit log", permission="gateway.audit.read"
    ),
    rule(
        GATEWAY,
        READ,
        "/erasure-requests/**",
        AUDIT_READERS,
        "erasure requests and each department's confirmation: administrators and auditors read them",
        permission="gateway.erasure.read",
    ),
    rule(
        GATEWAY,
        WRITE,
        "/erasure-requests/**",
        ADMINS,
        "administrators file erasure requests (a person forgotten by every department)",
        permission="gateway.erasure.manage",
    ),
)

CATALOGUE_RULES: tuple[RouteRule, ...] = ROUTE_TABLE + GATEWAY_TABLE


def find_rule(
    service: str, method: str, path: str, table: tuple[RouteRule, ...] = CATALOGUE_RULES
) -> RouteRule | None:
    """The first rule matching; ``path`` must already be normalised."""
    for r in table:
        if r.matches(service, method, path):
            return r
    return None


# --- the policy --------------------------------------------------------------------------------


@dataclass(frozen=True)
class PermissionSpec:
    """One permission of the catalogue: the rules it covers and the roles holding it by default."""

    name: str
    service: str
    rules: tuple[RouteRule, ...]
    default_roles: frozenset[str]

    @property
    def why(self) -> str:
        return self.rules[0].why


def _catalogue(rules: tuple[RouteRule, ...]) -> dict[str, PermissionSpec]:
    """Permission name -> spec; rules sharing a name must share their default roles."""
    out: dict[str, PermissionSpec] = {}
    for r in rules:
        roles = frozenset(str(x) for x in r.roles)
        known = out.get(r.permission)
        if known is not None and known.default_roles != roles:
            raise ValueError(f"permission {r.permission!r}: its rules name different roles")
        previous = known.rules if known is not None else ()
        out[r.permission] = PermissionSpec(r.permission, r.service, (*previous, r), roles)
    return out


CATALOGUE: dict[str, PermissionSpec] = _catalogue(CATALOGUE_RULES)
ROLES: tuple[str, ...] = tuple(str(r) for r in Role)
# What the admin role keeps whatever an administrator sends: without them nobody could
# change the policy or the accounts back (the gateway refuses such a change with 409).
ADMIN_KEEPS: frozenset[str] = frozenset(
    {"gateway.permissions.read", "gateway.permissions.manage", "gateway.users.manage"}
)


@dataclass(frozen=True)
class Policy:
    """Role -> the permissions it holds, numbered (0: the defaults, +1 per change)."""

    version: int
    grants: Mapping[str, frozenset[str]]

    def holds(self, role: str) -> frozenset[str]:
        return self.grants.get(role, frozenset())

    def roles_with(self, permission: str) -> frozenset[str]:
        return frozenset(role for role, held in self.grants.items() if permission in held)

    def allows(self, roles: Iterable[str], permission: str) -> bool:
        return any(permission in self.holds(role) for role in roles)

    def with_role(self, role: str, permissions: Iterable[str]) -> Policy:
        """The next version with ``role`` holding exactly ``permissions``.

        Unknown role or permission: :class:`RuleViolation` naming them (422); a change that
        would take from ``admin`` what administers the policy and the accounts: :class:`Conflict`.
        """
        wanted = frozenset(permissions)
        if role not in ROLES:
            raise RuleViolation(f"unknown role {role!r}; one of {list(ROLES)}", role=role)
        unknown = sorted(wanted - CATALOGUE.keys())
        if unknown:
            raise RuleViolation(
                f"unknown permission(s) {unknown}; GET /permissions lists them", permissions=unknown
            )
        if role == str(Role.ADMIN) and not wanted >= ADMIN_KEEPS:
            missing = sorted(ADMIN_KEEPS - wanted)
            raise Conflict(
                f"the admin role must keep {missing}: without them nobody could administer "
                "permissions or accounts again",
                permissions=missing,
            )
        return Policy(self.version + 1, {**self.grants, role: wanted})

    def to_grants(self) -> dict[str, list[str]]:
        return {role: sorted(self.grants.get(role, frozenset())) for role in ROLES}

    @classmethod
    def of(cls, version: int, grants: Mapping[str, Iterable[str]]) -> Policy:
        """From stored or received grants: unknown roles and permissions are dropped (a
        department running an older catalogue than the gateway's ignores what it cannot check)."""
        return cls(
            version,
            {
                role: frozenset(p for p in held if p in CATALOGUE)
                for role, held in grants.items()
                if role in ROLES
            },
        )


def _defaults() -> Policy:
    grants: dict[str, set[str]] = {role: set() for role in ROLES}
    for spec in CATALOGUE.values():
        for role in spec.default_roles:
            grants[role].add(spec.name)
    return Policy(0, {role: frozenset(held) for role, held in grants.items()})


DEFAULT_POLICY: Policy = _defaults()


# The permission found for a (service, method, path) is remembered: a service sees few distinct
# paths (its routes, ids aside), and each request asks up to three times (the permission policy,
# the router's and the route's role checks), each time a scan of the catalogue's rules (8-15 us).
# Paths a client makes long are not remembered (the cache's memory stays small).
REMEMBERED_PATHS = 2048
REMEMBERED_PATH_CHARS = 200


def permission_for(service: str, method: str, path: str) -> str | None:
    """The permission a request needs (None: no rule, refused by default; or an unsafe path)."""
    if len(path) > REMEMBERED_PATH_CHARS:
        return _permission_for(service, method, path)
    return _remembered_permission_for(service, method, path)


@functools.lru_cache(maxsize=REMEMBERED_PATHS)
def _remembered_permission_for(service: str, method: str, path: str) -> str | None:
    return _permission_for(service, method, path)


def _permission_for(service: str, method: str, path: str) -> str | None:
    try:
        matched = find_rule(service, method, normalize_path(path))
    except UnsafePath:
        return None
    return matched.permission if matched is not None else None
