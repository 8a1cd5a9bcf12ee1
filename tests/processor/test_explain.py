"""``processor.explain``: the verdict is the matcher's, the reason names the part that refused."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from processor.explain import Judge
from processor.models import Event, Subscription
from processor.stores.base import SubscriptionChange
from tests.processor.oracle import expected

NOW = datetime(2024, 5, 1, tzinfo=UTC)


def subscription(id: str, pattern: str = "*:*:*:*", **fields: Any) -> dict[str, Any]:
    return {
        "id": id,
        "client_id": "acme",
        "name": f"subscription {id}",
        "event_type_pattern": pattern,
        "target": "https://hooks.example.com/in",
        "pool_code": "default",
        **fields,
    }


SUBSCRIPTIONS = [
    subscription("all"),
    subscription("paused", active=False),
    subscription("billing", "billing:*:*:*"),
    subscription("from-web", filters={"source": ["web"]}),
    subscription("pro", filters={"metadata": {"tier": "pro"}}),
    subscription("big", filters={"payload": [{"path": "$.amount", "op": "gte", "value": 100}]}),
    subscription("has-sku", filters={"payload": ["$.lines[?@.sku == 'K1']"]}),
    subscription("costly", filters={"payload": ["$[?search(@, 'a{1000}')]"]}),
    subscription("other-client", client_id="globex"),
]
EVENTS = [
    {"type": "orders:checkout:order:placed", "data": {"amount": 42, "lines": [{"sku": "K2"}]}},
    {
        "type": "orders:checkout:order:placed",
        "source": "web",
        "metadata": {"tier": "pro"},
        "data": {"amount": 250},
    },
    {
        "type": "billing:invoice:line:added",
        "source": "api",
        "metadata": {"tier": "free"},
        "data": ["b" * 1_000_000],
    },
    {"type": "orders:checkout:order:placed", "data": {"lines": [{"sku": "K1"}]}},
]


def event(fields: dict[str, Any]) -> Event:
    return Event.model_validate({"id": "e1", "client_id": "acme", "time": NOW, **fields})


@pytest.mark.parametrize("fields", EVENTS)
def test_the_verdicts_are_the_oracle_s_and_every_refusal_has_a_reason(fields: dict[str, Any]) -> None:
    judge = Judge(SubscriptionChange(s["id"], s, -1) for s in SUBSCRIPTIONS)
    given = event(fields)
    verdicts = {v.subscription_id: v for v in judge.explain(given)}
    assert "other-client" not in verdicts, "only the event's client's subscriptions are explained"
    wanted, failed = expected([Subscription.model_validate(s) for s in SUBSCRIPTIONS], given)
    assert {key for key, v in verdicts.items() if v.matches} == wanted
    for key, verdict in verdicts.items():
        if not verdict.matches:
            assert verdict.field and verdict.reason, verdict
            assert "defect" not in verdict.reason, verdict
            assert (key in failed) == verdict.reason.startswith("could not be evaluated"), verdict


def test_a_refusal_names_the_part_and_the_value_it_saw() -> None:
    judge = Judge(SubscriptionChange(s["id"], s, -1) for s in SUBSCRIPTIONS)
    verdicts = {v.subscription_id: v for v in judge.explain(event(EVENTS[0]))}
    assert (verdicts["paused"].field, verdicts["paused"].reason) == ("active", "the subscription is inactive")
    assert verdicts["billing"].field == "event_type_pattern"
    assert "segment 1 (domain) of the type is 'orders'" in (verdicts["billing"].reason or "")
    assert verdicts["from-web"].reason == 'the event has no source; the subscription takes only ["web"]'
    assert verdicts["pro"].field == "filters.metadata.tier"
    assert verdicts["big"].field == "filters.payload[0]"
    assert verdicts["big"].reason == "$.amount gte 100 fails: the event's data has 42 there"
    assert verdicts["all"].job_id is not None


def test_a_stored_subscription_that_breaks_the_contract_is_explained_as_skipped() -> None:
    broken = subscription("broken", "not-a-pattern")
    (verdict,) = Judge([SubscriptionChange("broken", broken, -1)]).explain(event(EVENTS[0]))
    assert not verdict.matches and verdict.field == "subscription"
    assert "event_type_pattern" in (verdict.reason or "")


def test_a_value_holding_a_lone_surrogate_is_shown_escaped_in_text_any_response_can_carry() -> None:
    judge = Judge(SubscriptionChange(s["id"], s, -1) for s in SUBSCRIPTIONS)
    verdicts = {
        v.subscription_id: v for v in judge.explain(event({**EVENTS[0], "data": {"amount": "\ud800"}}))
    }
    reason = verdicts["big"].reason or ""
    assert "\\ud800" in reason
    reason.encode("utf-8")  # strict: a surrogate would raise here
