"""A fuzzer over every service's OpenAPI spec, as an outside client would run one: no 500s.

Schemathesis generates requests from each spec (valid and invalid bodies,
parameters and headers, a bounded number per operation) and each is sent to the
running app (real mongod and broker, a fresh database) with a token holding
every role. Any 5xx other than a 503 from an unreachable upstream is a defect:
bad input must be a 4xx naming what is wrong. Before the HTTP-input fixes this
found the timestamp overflows and the 2^64 custom field (500s).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest
import schemathesis
from crm_platform.auth import Role
from crm_platform.testing import auth_headers, running_app
from fastapi import FastAPI
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import Case
from schemathesis.core.result import Ok

pytestmark = pytest.mark.integration

EXAMPLES = int(os.environ.get("CRM_FUZZ_EXAMPLES", "8"))
ALL_ROLES = auth_headers([r.value for r in Role], "fuzzer")


def _settings(service: str, kafka: str, mongo: str) -> dict[str, Any]:
    return {
        "CRM_SERVICE_NAME": service,
        "CRM_ENV": "test",
        "KAFKA_BOOTSTRAP_SERVERS": kafka,
        "MONGODB_URI": mongo,
        "MONGODB_DATABASE": f"fuzz_{service.replace('-', '_')}_{uuid.uuid4().hex[:8]}",
        "CRM_CONSUMER_ENABLED": False,
        "CRM_PROVISION_TOPICS": False,
        "CRM_OUTBOX_POLL_SECONDS": 0.2,
        # The gateway forwards to departments that are not running here: a closed port.
        "CRM_LEADS_URL": "http://127.0.0.1:9",
        "CRM_SALES_URL": "http://127.0.0.1:9",
        "CRM_SERVICE_DESK_URL": "http://127.0.0.1:9",
        "CRM_ANALYTICS_URL": "http://127.0.0.1:9",
        "CRM_ADMIN_PASSWORD": "fuzz-admin-password-1",
    }


def _builders() -> dict[str, Callable[[dict[str, Any]], FastAPI]]:
    from analytics.main import create_app as analytics_app
    from analytics.settings import AnalyticsSettings
    from gateway.main import create_app as gateway_app
    from gateway.settings import GatewaySettings
    from leads.bootstrap import build_app
    from leads.settings import LeadsSettings
    from sales.main import create_app as sales_app
    from sales.settings import SalesSettings
    from service_desk.main import create_app as desk_app
    from service_desk.settings import ServiceDeskSettings

    return {
        "leads": lambda s: build_app(LeadsSettings.model_validate(s)),
        "sales": lambda s: sales_app(SalesSettings.model_validate(s)),
        "service-desk": lambda s: desk_app(ServiceDeskSettings.model_validate(s)),
        "analytics": lambda s: analytics_app(AnalyticsSettings.model_validate(s)),
        "gateway": lambda s: gateway_app(GatewaySettings.model_validate(s)),
    }


def _cases(doc: dict[str, Any], examples: int) -> list[Case]:
    """Generate the cases up front (Hypothesis drives generation only; requests go out async)."""
    schema = schemathesis.openapi.from_dict(doc)
    out: list[Case] = []
    for result in schema.get_all_operations():
        assert isinstance(result, Ok), result
        operation = result.ok()

        @settings(
            max_examples=examples,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.explicit, Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        @given(operation.as_strategy())
        def collect(case: Case) -> None:
            out.append(case)

        collect()
    return out


def _request(case: Case) -> dict[str, Any]:
    kwargs = case.as_transport_kwargs(base_url="http://test", headers=ALL_ROLES)
    kwargs.pop("verify", None)
    kwargs.pop("cookies", None)
    if "json" in kwargs and kwargs["json"] is None:
        kwargs.pop("json")
    return {
        k: v
        for k, v in kwargs.items()
        if k in ("method", "url", "headers", "params", "json", "content", "data")
    }


@pytest.mark.parametrize("service", ["leads", "sales", "service-desk", "analytics", "gateway"])
async def test_no_request_generated_from_the_spec_gets_a_500(
    service: str, kafka_bootstrap: str, mongodb_uri: str
) -> None:
    app = _builders()[service](_settings(service, kafka_bootstrap, mongodb_uri))
    failures: list[str] = []
    async with running_app(app) as client:
        doc = (await client.get("/openapi.json")).json()
        cases = _cases(doc, EXAMPLES if service != "gateway" else max(3, EXAMPLES // 3))
        assert cases, f"no operations generated for {service}"
        for case in cases:
            try:
                r = await client.request(**_request(case), timeout=30)
            except httpx.HTTPError as exc:
                failures.append(f"{case.method} {case.formatted_path}: {type(exc).__name__} {exc}")
                continue
            upstream_down = service == "gateway" and r.status_code in (502, 503, 504)
            if r.status_code >= 500 and not upstream_down:
                failures.append(f"{case.method} {case.formatted_path} -> {r.status_code}: {r.text[:300]}")
    assert not failures, f"{len(failures)} of {len(cases)} requests got a 5xx:\n" + "\n".join(failures[:20])
