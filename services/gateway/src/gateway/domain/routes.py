"""Which services the gateway fronts, and the check per route before forwarding.

The route table itself is the platform's permission catalogue
(:mod:`crm_platform.permissions`, shared with every service, which checks it again): each
rule names the permission a request needs, and the role -> permission policy (data an
administrator edits, ``GET/PUT /permissions``) decides who holds it. **Deny by default**: a
request matching no rule is refused (403), whoever sends it.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from crm_platform.permissions import (
    ANALYTICS,
    CATALOGUE,
    DEFAULT_POLICY,
    GATEWAY_TABLE,
    LEADS,
    REMEMBERED_PATH_CHARS,
    REMEMBERED_PATHS,
    ROUTE_TABLE,
    SALES,
    SERVICE_DESK,
    SERVICES,
    Policy,
    RouteRule,
    UnsafePath,
    compile_pattern,
    normalize_path,
    rule,
)

__all__ = [
    "ANALYTICS",
    "CONSOLE",
    "GATEWAY_TABLE",
    "LEADS",
    "PUBLIC_ROUTES",
    "ROUTE_TABLE",
    "SALES",
    "SERVICES",
    "SERVICE_DESK",
    "Decision",
    "PublicRoute",
    "RouteRule",
    "UnsafePath",
    "authorize",
    "find_public_route",
    "find_rule",
    "is_upload",
    "normalize_path",
    "rule",
]

# The web console is an upstream too, but not an API: it is served at / (gateway.api.console).
CONSOLE = "console"

# Uploads: forwarded as a stream (never read whole), up to CRM_MAX_UPLOAD_BYTES.
UPLOAD_PATHS = re.compile(r"^/api/leads/imports/[^/]+/file$")


def is_upload(path: str) -> bool:
    """A request whose body the gateway streams to the service (an import's file)."""
    return UPLOAD_PATHS.match(path) is not None


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
        object.__setattr__(self, "regex", compile_pattern(self.pattern))

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
    roles: frozenset[str] | None = None  # the roles holding the rule's permission (the policy's)

    @property
    def required_roles(self) -> frozenset[str] | None:
        return self.roles


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
    policy: Policy = DEFAULT_POLICY,
) -> Decision:
    """May a user with ``roles`` call ``method path`` on ``service``, under ``policy``?
    ``path`` is normalised here."""
    if table is ROUTE_TABLE and len(path) <= REMEMBERED_PATH_CHARS:
        matched = _remembered_rule(service, method, path)
    else:
        matched = find_rule(service, method, normalize_path(path), table)
    if matched is None:
        return Decision(False, None)
    if matched.permission in CATALOGUE:
        holders = policy.roles_with(matched.permission)
    else:  # a rule outside the catalogue (a test's own table): its roles decide
        holders = frozenset(str(r) for r in matched.roles)
    return Decision(bool(set(roles) & holders), matched, holders)


# The rule of a (service, method, path) in the route table is remembered (a constant table:
# a pure function of the three), as crm_platform.permissions remembers the permission; a path
# a client makes long, or an unsafe one (normalize_path raises), is looked at every time.
@functools.lru_cache(maxsize=REMEMBERED_PATHS)
def _remembered_rule(service: str, method: str, path: str) -> RouteRule | None:
    return find_rule(service, method, normalize_path(path))
