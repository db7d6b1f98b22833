"""Which pages each role opens: the console's menu and its first page per role.

The gateway and the services decide what a user may do; this table mirrors the
gateway's route table so that the console never offers a page whose API would
refuse the user. A page opened anyway by a user without the role answers 403
with words saying which roles it needs.
"""

from __future__ import annotations

from dataclasses import dataclass

ADMIN = "admin"
MARKETING = "marketing"
SALES_REP = "sales_rep"
SALES_MANAGER = "sales_manager"
SERVICE_REP = "service_rep"
CSM = "customer_success_manager"
ANALYST = "analyst"
EXECUTIVE = "executive"
AUDITOR = "auditor"
SERVICE_LEAD = "service_lead"
MARKETING_MANAGER = "marketing_manager"
ROLES: tuple[str, ...] = (
    ADMIN,
    MARKETING,
    MARKETING_MANAGER,
    SALES_MANAGER,
    SALES_REP,
    SERVICE_REP,
    CSM,
    SERVICE_LEAD,
    ANALYST,
    EXECUTIVE,
    AUDITOR,
)

ROLE_LABELS = {
    ADMIN: "administrator",
    MARKETING: "marketing",
    SALES_MANAGER: "sales manager",
    SALES_REP: "sales rep",
    SERVICE_REP: "service rep",
    CSM: "customer success manager",
    ANALYST: "analyst",
    EXECUTIVE: "executive",
    AUDITOR: "auditor",
    SERVICE_LEAD: "service team lead",
    MARKETING_MANAGER: "marketing manager",
}

MARKETERS = frozenset({MARKETING, MARKETING_MANAGER, ADMIN})
SALES = frozenset({SALES_REP, SALES_MANAGER, ADMIN})
SALES_LEADS = frozenset({SALES_MANAGER, ADMIN})
SERVICE = frozenset({SERVICE_REP, CSM, SERVICE_LEAD, ADMIN})
CSM_LEADS = frozenset({CSM, SERVICE_LEAD, ADMIN})
LEAD_READERS = MARKETERS | SALES | {ANALYST}
REPORT_READERS = frozenset({ANALYST, SALES_MANAGER, EXECUTIVE, ADMIN})
# Every KPI without records' personal data (analytics' /kpis); each department reads its own part.
KPI_READERS = frozenset({ANALYST, EXECUTIVE, ADMIN})
FORECAST_READERS = SALES | {ANALYST}
ADMINS = frozenset({ADMIN})
# Every service's audit log (read-only): auditors read nothing else.
AUDIT_READERS = frozenset({AUDITOR, ADMIN})
# The customer 360 reads records: every role but the auditor (who reads the audit log only).
EVERYONE = frozenset(ROLES) - {AUDITOR}


@dataclass(frozen=True)
class Page:
    key: str
    title: str
    path: str
    roles: frozenset[str]
    in_menu: bool = True


PAGES: tuple[Page, ...] = (
    Page("leads", "Leads", "/leads", MARKETERS),
    Page("capture", "Capture a lead", "/leads/new", MARKETERS),
    Page("scoring", "Scoring rules", "/scoring", MARKETERS),
    Page("inbox", "Inbox", "/inbox", SALES),
    Page("pipeline", "Pipeline", "/pipeline", SALES),
    Page("forecast", "Forecast", "/forecast", FORECAST_READERS),
    Page("team", "Team & SLA", "/team", SALES_LEADS),
    Page("stages", "Stages & fields", "/team/stages", SALES_LEADS),
    Page("tickets", "Tickets", "/tickets", SERVICE),
    Page("accounts", "Accounts", "/accounts", SERVICE),
    Page("renewals", "Renewals", "/renewals", SERVICE),
    Page("checkins", "Check-ins due", "/checkins", SERVICE),
    Page("churn_warnings", "Churn warnings", "/churn-warnings", SERVICE),
    Page("reviews", "Commitment reviews", "/commitment-reviews", CSM_LEADS),
    Page("health_rules", "Health rules", "/health-rules", SERVICE),
    Page("action_items", "Action items", "/action-items", MARKETERS | SALES | SERVICE),
    Page("dashboard", "Dashboard", "/dashboard", REPORT_READERS),
    Page("kpis", "KPIs", "/kpis", KPI_READERS),
    Page("service_kpis", "Service KPIs", "/kpis/service", SERVICE | KPI_READERS),
    Page("marketing_kpis", "Channel figures", "/kpis/marketing", MARKETERS | KPI_READERS),
    Page("users", "Users & roles", "/admin/users", ADMINS),
    # Not /audit: the gateway answers that path itself (its own audit API).
    Page("audit", "Audit log", "/audit-log", AUDIT_READERS),
    # Reached from a lead, an inbox item, a deal or an account; each part is shown by permission.
    Page("customer", "Customer 360", "/customers", EVERYONE, in_menu=False),
    Page("lead", "Lead", "/leads/{id}", LEAD_READERS, in_menu=False),
    Page("opportunity", "Opportunity", "/opportunities/{id}", SALES, in_menu=False),
    Page("ticket", "Ticket", "/tickets/{id}", SERVICE, in_menu=False),
    Page("account", "Account", "/accounts/{id}", SERVICE, in_menu=False),
)
BY_KEY = {p.key: p for p in PAGES}

# What each role opens first, in order of preference for a user with several roles.
HOME_BY_ROLE: tuple[tuple[str, str], ...] = (
    (ADMIN, "users"),
    (SALES_MANAGER, "inbox"),
    (SALES_REP, "inbox"),
    (MARKETING_MANAGER, "leads"),
    (MARKETING, "leads"),
    (SERVICE_LEAD, "accounts"),
    (CSM, "accounts"),
    (SERVICE_REP, "tickets"),
    (ANALYST, "dashboard"),
    (EXECUTIVE, "kpis"),
    (AUDITOR, "audit"),
)


def menu(roles: frozenset[str]) -> list[Page]:
    return [p for p in PAGES if p.in_menu and roles & p.roles]


def home(roles: frozenset[str]) -> str:
    for role, key in HOME_BY_ROLE:
        if role in roles:
            return BY_KEY[key].path
    return "/me"


def may_open(key: str, roles: frozenset[str]) -> bool:
    return bool(roles & BY_KEY[key].roles)


def describe_roles(roles: frozenset[str] | set[str]) -> str:
    return ", ".join(ROLE_LABELS.get(r, r) for r in sorted(roles)) or "no role"
