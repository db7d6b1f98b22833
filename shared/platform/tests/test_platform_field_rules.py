"""Field-level rules (crm_platform.field_rules), no I/O: create_app pseudonymises every JSON answer
and csv_stream every export for analysts and executives only; free text is withheld."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence

import httpx
import pytest
from crm_platform.app import create_app
from crm_platform.csv_stream import Cell, CsvResponse, csv_response
from crm_platform.field_rules import (
    Pseudonymiser,
    applies_to,
    pseudonymise_changes,
    pseudonymise_json,
    pseudonymiser,
    row_transform,
)
from crm_platform.pseudonym import DEV_PSEUDONYM_KEY, pseudonym
from crm_platform.settings import ServiceSettings
from crm_platform.testing import auth_headers
from fastapi import APIRouter, FastAPI

BASE = {"KAFKA_BOOTSTRAP_SERVERS": "unused:9092", "MONGODB_URI": "mongodb://127.0.0.1:1"}


class P:
    """The expected pseudonyms (the tests run with the development key)."""

    @staticmethod
    def email(v: str) -> str:
        return pseudonym("email", v, DEV_PSEUDONYM_KEY)

    @staticmethod
    def phone(v: str) -> str:
        return pseudonym("phone", v, DEV_PSEUDONYM_KEY)

    @staticmethod
    def name(v: str) -> str:
        return pseudonym("name", v, DEV_PSEUDONYM_KEY)


def test_only_users_whose_roles_are_all_analyst_or_executive_see_pseudonyms() -> None:
    assert applies_to(["analyst"])
    assert applies_to(["executive", "analyst"])
    assert not applies_to(["analyst", "marketing"])
    assert not applies_to(["executive", "admin"])
    assert not applies_to([])


def test_audit_changes_are_pseudonymised_by_field_name_and_record_type() -> None:
    entry = {
        "record": {"type": "leads", "id": "l1"},
        "changes": [
            {"field": "name", "before": "Ada L", "after": "Ada Lovelace"},
            {"field": "company", "before": None, "after": "Engines"},
        ],
    }
    account = {
        "record": {"type": "accounts", "id": "a1"},
        "changes": [{"field": "name", "before": None, "after": "Acme"}],
    }
    out = pseudonymise_json({"items": [entry, account]}, _pseudonymiser())
    assert out["items"][0]["changes"] == [
        {"field": "name", "before": P.name("Ada L"), "after": P.name("Ada Lovelace")},
        {"field": "company", "before": None, "after": "Engines"},
    ]
    assert out["items"][1] == account  # an account's name is not a person's


def _pseudonymiser() -> Pseudonymiser:
    return pseudonymiser(DEV_PSEUDONYM_KEY)


# -- the edge and the CSV export, through create_app (no database: the routes answer constants) --

PERSON = {"id": "lead-1", "email": "Ada@Example.com", "name": "Ada Lovelace", "phone": "+44 20 7946 0958"}
ACCOUNT = {"id": "acc-1", "name": "Acme Ltd", "contacts": [{"name": "Bob Stone", "email": "bob@acme.test"}]}
router = APIRouter()


@router.get("/people")
async def people() -> dict[str, object]:
    history = {"before": {"name": "Ada L", "email": "ada@example.com"}, "after": {"company": "Analytical"}}
    return {"items": [PERSON], "account": ACCOUNT, "history": [history], "notes": "called Ada at home"}


@router.get("/people/export")
async def export() -> CsvResponse:
    async def rows() -> AsyncIterator[Sequence[Cell]]:
        for _ in range(3):
            yield (PERSON["id"], PERSON["email"], PERSON["name"], PERSON["phone"], "Acme", "=notes")

    return csv_response("people.csv", ("id", "email", "name", "phone", "company", "notes"), rows())


def _app() -> FastAPI:
    return create_app(
        settings=ServiceSettings.model_validate(BASE), title="t", runtime=None, protected=[router]
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=_app()), base_url="http://t") as c:
        yield c


@pytest.mark.parametrize("roles", [["analyst"], ["executive"], ["analyst", "executive"]])
async def test_analysts_and_executives_get_pseudonyms_in_json_at_any_depth(
    client: httpx.AsyncClient, roles: list[str]
) -> None:
    r = await client.get("/people", headers=auth_headers(roles))
    assert r.status_code == 200
    body = r.json()
    assert body["items"] == [
        {
            "id": "lead-1",
            "email": P.email("ada@example.com"),
            "name": P.name("ada lovelace"),
            "phone": P.phone("442079460958"),
        }
    ]
    # an account's name is not a person's; its contacts are
    assert body["account"]["name"] == "Acme Ltd"
    assert body["account"]["contacts"] == [{"name": P.name("Bob Stone"), "email": P.email("bob@acme.test")}]
    assert body["history"][0]["before"] == {"name": P.name("Ada L"), "email": P.email("ada@example.com")}
    assert body["history"][0]["after"] == {"company": "Analytical"}
    assert body["notes"] == "[withheld]"
    assert int(r.headers["content-length"]) == len(r.content)
    for secret in ("Ada", "ada@", "7946", "Bob", "acme.test"):
        assert secret not in r.text


@pytest.mark.parametrize(
    "roles", [["marketing"], ["admin"], ["analyst", "marketing"], ["executive", "sales_rep"]]
)
async def test_operational_roles_see_real_data_untouched(client: httpx.AsyncClient, roles: list[str]) -> None:
    r = await client.get("/people", headers=auth_headers(roles))
    assert r.json()["items"] == [PERSON]
    assert r.json()["notes"] == "called Ada at home"


async def test_exports_are_pseudonymised_row_by_row_and_stay_streamed(client: httpx.AsyncClient) -> None:
    r = await client.get("/people/export", headers=auth_headers(["analyst"]))
    assert r.status_code == 200
    assert "content-length" not in r.headers  # still a stream, not a rewritten whole
    lines = r.text.splitlines()
    assert lines[0] == "id,email,name,phone,company,notes"
    person = f"{P.email('ada@example.com')},{P.name('ada lovelace')},{P.phone('442079460958')}"
    expected = f"lead-1,{person},Acme,[withheld]"
    assert lines[1:] == [expected] * 3
    real = await client.get("/people/export", headers=auth_headers(["analyst", "marketing"]))
    assert real.text.splitlines()[1] == "lead-1,Ada@Example.com,Ada Lovelace,'+44 20 7946 0958,Acme,'=notes"


def test_row_transform_is_none_for_exports_without_personal_columns() -> None:
    assert row_transform(("id", "name", "stage"), _pseudonymiser()) is None  # a name alone: not a person
    assert row_transform(("id", "email"), _pseudonymiser()) is not None


def test_text_custom_values_are_withheld_unless_the_key_is_defined_as_non_text() -> None:
    p = _pseudonymiser()
    record = {
        "id": "l1",
        "custom": {"tier": "gold", "nickname": "Bobby", "seats": 3, "budget": {"amount": "1"}},
    }
    assert pseudonymise_json(record, p, frozenset({"tier", "seats", "budget"}))["custom"] == {
        "tier": "gold",
        "nickname": "[withheld]",
        "seats": 3,
        "budget": {"amount": "1"},
    }
    assert pseudonymise_json(record, p)["custom"]["tier"] == "[withheld]", "no definitions: fail closed"
    change = [{"field": "custom.nickname", "before": None, "after": "Bobby"}]
    assert pseudonymise_changes(change, "leads", p, frozenset({"tier"}))[0]["after"] == "[withheld]"
    transform = row_transform(
        ("id", "custom.tier", "custom.nickname", "custom.seats"), p, frozenset({"tier"})
    )
    assert transform is not None
    assert list(transform(("l1", "gold", "Bobby", 3))) == ["l1", "gold", "[withheld]", 3]
