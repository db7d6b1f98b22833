"""Marketing's own Prometheus metrics (``crm_leads_`` prefix), observed after commit."""

from __future__ import annotations

from prometheus_client import Counter

LEADS_CAPTURED = Counter("crm_leads_captured", "Leads captured, by whether they merged", ["merged"])
LEADS_QUALIFIED = Counter("crm_leads_qualified", "Leads handed to sales (lead.qualified emitted)")
LEAD_VERDICTS = Counter(
    "crm_leads_verdicts", "Sales' verdicts received, by verdict and outcome", ["verdict", "outcome"]
)
BEHAVIOURS_RECORDED = Counter("crm_leads_behaviours_recorded", "Behaviours recorded", ["behaviour"])
IMPORT_ROWS = Counter("crm_leads_import_rows", "Rows of import files, by outcome", ["outcome"])
