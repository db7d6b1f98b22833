"""The roles a user can hold (names in the token's ``roles`` claim)."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    ADMIN = "admin"
    SALES_MANAGER = "sales_manager"
    SALES_REP = "sales_rep"
    SERVICE_REP = "service_rep"
    CUSTOMER_SUCCESS_MANAGER = "customer_success_manager"
    MARKETING = "marketing"
    ANALYST = "analyst"
    # Issue 9: reads every service's audit log (GET /audit, its CSV export) and nothing else.
    AUDITOR = "auditor"
    # Issue 7: team views, reassignment and escalations in service/success; marketing's
    # scoring, campaigns and team figures; every KPI read-only, no records' personal data.
    SERVICE_LEAD = "service_lead"
    MARKETING_MANAGER = "marketing_manager"
    EXECUTIVE = "executive"
