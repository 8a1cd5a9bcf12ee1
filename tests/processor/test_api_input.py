"""The API against hostile input, over real HTTP: every refusal is a 4xx in the
one error shape that names the field and the problem, never a server error.

One server for the module (uvicorn in a thread, on a real store file): these
tests only send requests and read answers, and each uses ids of its own.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from processor import targets
from processor.jobs import create_jobs
from processor.matching import SubscriptionMatcher
from processor.models import Event, Subscription, SubscriptionFields
from processor.stores.base import ProcessedBatch, SubscriptionChange
from processor.stores.sqlite import Catalog, SqliteRepairs, SqliteStore
from processor.targets import TargetPolicy
from tests.processor.harness import assert_refused, serving

JSON_BODY = {"content-type": "application/json"}
SUBSCRIPTION = {
    "client_id": "shop",
    "name": "orders",
    "event_type_pattern": "orders:*:*:*",
    "target": "https://hooks.example.com/in",
    "pool_code": "p",
}


@pytest.fixture(scope="module")
def db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("api") / "api.db"
    SqliteStore(path).close()
    return path


@pytest.fixture(scope="module")
def api(db: Path) -> Iterator[httpx.Client]:
    catalog = Catalog(db)
    with closing(SqliteRepairs(db)) as repairs, serving(catalog, repairs) as http:
        yield http
    catalog.close()


def post_json(api: httpx.Client, path: str, text: bytes) -> httpx.Response:
    return api.post(path, content=text, headers=JSON_BODY)


def test_a_cursor_past_what_the_store_can_hold_is_refused_naming_it(api: httpx.Client) -> None:
    for path in ("/api/dispatch-jobs", "/api/dead-letters", "/api/filter-failures"):
        assert_refused(api.get(path, params={"after": 2**63}), 422, "after")
        assert api.get(path, params={"after": 2**63 - 1}).status_code == 200


def test_text_that_is_not_unicode_is_refused_wherever_it_is_in_the_body(api: httpx.Client) -> None:
    """A lone surrogate escape reached SQLite's encoder and answered 500, in data,
    in a metadata key and in a filter's value."""
    bodies = [
        ("/api/events", b'{"type": "a:b:c:d", "client_id": "x", "data": "\\ud800"}'),
        ("/api/events", b'{"type": "a:b:c:d", "client_id": "x", "metadata": {"\\udfff": 1}}'),
        ("/api/events", b'[{"type": "a:b:c:d", "client_id": "x", "subject": "\\ud800x"}]'),
        (
            "/api/subscriptions",
            json.dumps({**SUBSCRIPTION, "filters": {"payload": [{"path": "$.a", "op": "eq", "value": "@"}]}})
            .replace("@", "\\ud800")
            .encode(),
        ),
        ("/api/events", b'{"type": "a:b:c:d", "client_id": "\xff\xfe"}'),
    ]
    for path, body in bodies:
        refusal = assert_refused(post_json(api, path, body), 422, "body")
        assert "Unicode" in refusal["error"] or "UTF-8" in refusal["error"], refusal


def test_a_body_the_parser_refuses_says_why_not_only_that_it_failed(api: httpx.Client) -> None:
    deep = assert_refused(post_json(api, "/api/events", b"[" * 5000 + b"]" * 5000), 422, "body")
    assert "200 levels" in deep["error"]
    number = b'{"type": "a:b:c:d", "client_id": "x", "data": ' + b"7" * 5000 + b"}"
    assert "number too large" in assert_refused(post_json(api, "/api/events", number), 422, "body")["error"]
    broken = assert_refused(post_json(api, "/api/subscriptions", b'{"name": '), 422, "body")
    assert "not valid JSON" in broken["error"] and "line 1" in broken["error"]


def test_a_body_not_sent_as_json_is_415_saying_what_to_send(api: httpx.Client) -> None:
    body = json.dumps({"type": "a:b:c:d", "client_id": "x"}).encode()
    for headers in (
        {"content-type": "text/plain"},
        {"content-type": "application/x-www-form-urlencoded"},
        {},
    ):
        refusal = assert_refused(api.post("/api/events", content=body, headers=headers), 415, "content-type")
        assert "application/json" in refusal["error"]
    patch = api.patch("/api/subscriptions/x", content=b"{}", headers={"content-type": "text/json"})
    assert_refused(patch, 415, "content-type")
    typed = api.post("/api/events", content=body, headers={"content-type": "application/cloudevents+json"})
    assert typed.status_code == 201, typed.text


def test_a_body_that_is_not_an_event_says_what_it_should_be_in_the_contracts_words(api: httpx.Client) -> None:
    for scalar in (b"5", b'"event"', b"null", b"true"):
        refusal = assert_refused(post_json(api, "/api/events", scalar), 422, "body")
        assert refusal["fields"][0]["problem"] == "must be an event (a JSON object) or an array of events"
        assert "NewEvent" not in refusal["error"]
    item = assert_refused(
        post_json(api, "/api/events", b'[{"type": "a:b:c:d", "client_id": "x"}, 5]'), 422, "[1]"
    )
    assert item["fields"][0]["problem"] == "must be a JSON object"
    assert_refused(post_json(api, "/api/subscriptions", b"[]"), 422, "body")


def test_an_id_repeated_within_one_batch_names_both_places_and_writes_nothing(
    api: httpx.Client, db: Path
) -> None:
    batch = [{"id": f"repeat-{n}", "type": "a:b:c:d", "client_id": "repeat"} for n in (0, 1, 0)]
    refusal = assert_refused(api.post("/api/events", json=batch), 409, "[2].id")
    assert "[0]" in refusal["error"] and "exists already" not in refusal["error"]
    with closing(sqlite3.connect(db)) as sql:
        assert sql.execute("SELECT count(*) FROM events WHERE client_id = 'repeat'").fetchone() == (0,)
    taken = api.post("/api/events", json=[{"id": "taken-0", "type": "a:b:c:d", "client_id": "taken"}])
    assert taken.status_code == 201
    assert_refused(
        api.post("/api/events", json=[{"id": "taken-0", "type": "a:b:c:d", "client_id": "x"}]), 409, "[0].id"
    )


def test_a_status_is_matched_in_upper_case_as_statuses_are_stored(api: httpx.Client, db: Path) -> None:
    subscription = Subscription.model_validate(
        {**SUBSCRIPTION, "client_id": "status-shop", "id": "status-sub"}
    )
    event = Event.model_validate(
        {
            "id": "status-event",
            "type": "orders:a:b:c",
            "client_id": "status-shop",
            "time": "2025-01-01T00:00:00Z",
        }
    )
    store = SqliteStore(db)
    store.commit(
        ProcessedBatch(create_jobs(event, [subscription], datetime.now(UTC)), [], None, [], None, {})
    )
    store.close()
    for status in ("pending", "PENDING", "Pending"):
        items = api.get("/api/dispatch-jobs", params={"status": status, "client_id": "status-shop"}).json()[
            "items"
        ]
        assert [job["event_id"] for job in items] == ["status-event"], status
    assert_refused(api.get("/api/dispatch-jobs", params={"status": "pending; drop"}), 422, "status")


def test_a_query_parameter_given_twice_is_refused_instead_of_one_being_guessed(api: httpx.Client) -> None:
    assert_refused(api.get("/api/dispatch-jobs?limit=5&limit=6"), 422, "limit")
    assert_refused(api.get("/api/subscriptions?client_id=a&client_id=b"), 422, "client_id")


def test_a_method_a_path_does_not_take_lists_every_method_it_does(api: httpx.Client) -> None:
    response = api.put("/api/subscriptions")
    assert_refused(response, 405)
    assert response.headers["allow"] == "GET, POST"
    one = api.put("/api/subscriptions/some-id")
    assert_refused(one, 405)
    assert one.headers["allow"] == "DELETE, GET, PATCH"
    assert_refused(api.get("/api/nowhere"), 404)


def test_an_unexpected_error_is_a_500_in_the_error_shape_whose_id_is_in_the_log(
    db: Path, caplog: pytest.LogCaptureFixture
) -> None:
    catalog = Catalog(db)
    with closing(SqliteRepairs(db)) as repairs, serving(catalog, repairs) as http:
        catalog.close()  # every call now raises sqlite3.ProgrammingError, which no route expects
        with caplog.at_level(logging.ERROR, logger="processor.http_errors"):
            response = http.get("/api/subscriptions")
    assert_refused(response, 500)
    error_id = response.headers["x-error-id"]
    assert error_id in response.json()["error"]
    logged = [record for record in caplog.records if error_id in record.getMessage()]
    assert logged and logged[0].exc_info is not None, caplog.text


@pytest.mark.parametrize(
    "target",
    [
        "http://a b/in",
        "http:///etc/passwd",  # a WHATWG parser would take "etc" for the host
        "https://hooks.example.com/in\r\nX-Injected: 1",
        "https://hooks.example.com/in\x00",
        "https://hooks.example.com/\tin",
        "https://hooks.example.com/" + "a" * 900_000,
        "ftp://hooks.example.com/in",
        "https://",
        "http://hooks.example.com:0/in",
        "http://169.254.169.254/latest/meta-data/",
        "http://0xA9FEA9FE/latest/meta-data/",  # the same address, spelt in hex
        "http://[fd00:ec2::254]/latest/",
        "http://[fe80::1]/in",
    ],
)
def test_a_target_that_is_not_a_callable_http_url_is_refused(api: httpx.Client, target: str) -> None:
    assert_refused(api.post("/api/subscriptions", json={**SUBSCRIPTION, "target": target}), 422, "target")


@pytest.mark.parametrize(
    ("target", "stored"),
    [
        ("HTTPS://Hooks.Example.com/in", "https://hooks.example.com/in"),  # schemes and hosts have no case
        ("https://hooks.example.com", "https://hooks.example.com/"),
        ("http://billing/hooks", "http://billing/hooks"),  # an internal service name
        ("http://10.1.2.3:8080/in", "http://10.1.2.3:8080/in"),
        ("http://127.0.0.1/in", "http://127.0.0.1/in"),
    ],
)
def test_a_target_is_stored_as_it_was_checked(api: httpx.Client, target: str, stored: str) -> None:
    response = api.post("/api/subscriptions", json={**SUBSCRIPTION, "target": target})
    assert response.status_code == 201, response.text
    assert response.json()["target"] == stored
    assert api.get(f"/api/subscriptions/{response.json()['id']}").json()["target"] == stored


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("name", "n" * 1001),
        ("name", " \t "),
        ("pool_code", "p" * 500_000),
        ("pool_code", "   "),
        ("event_type_pattern", "orders:" + "a" * 257 + ":*:*"),
        ("client_id", "c" * 257),
    ],
)
def test_a_text_field_past_its_limit_is_refused_naming_it(api: httpx.Client, field: str, value: str) -> None:
    assert_refused(api.post("/api/subscriptions", json={**SUBSCRIPTION, field: value}), 422, field)


def test_a_subscription_stored_invalid_is_listed_with_why_beside_the_others(
    api: httpx.Client, db: Path
) -> None:
    client = "listing-shop"
    good = api.post("/api/subscriptions", json={**SUBSCRIPTION, "client_id": client}).json()["id"]
    bad = api.post("/api/subscriptions", json={**SUBSCRIPTION, "client_id": client, "name": "bad"}).json()[
        "id"
    ]
    with closing(sqlite3.connect(db)) as sql, sql:
        sql.execute("UPDATE subscriptions SET target = 'ftp://x', active = 7 WHERE id = ?", (bad,))
    listed = api.get("/api/subscriptions", params={"client_id": client})
    assert listed.status_code == 200, listed.text
    items = {item["id"]: item for item in listed.json()["items"]}
    assert "invalid" not in items[good]
    assert "target" in items[bad]["invalid"] and items[bad]["target"] == "ftp://x", items[bad]
    shown = api.get(f"/api/subscriptions/{bad}")
    assert shown.status_code == 200 and shown.json()["invalid"] == items[bad]["invalid"]
    mended = api.patch(
        f"/api/subscriptions/{bad}", json={"target": "https://hooks.example.com/b", "active": True}
    )
    assert mended.status_code == 200, mended.text
    assert "invalid" not in api.get(f"/api/subscriptions/{bad}").json()


def with_policy(policy: TargetPolicy) -> Any:
    """Run a test under ``policy``, and restore the default after it."""

    @contextmanager
    def applied() -> Iterator[None]:
        targets.configure(policy)
        try:
            yield
        finally:
            targets.configure(TargetPolicy())

    return applied()


def fields(target: str) -> dict[str, Any]:
    return {**SUBSCRIPTION, "target": target}


def test_the_public_policy_refuses_private_hosts_and_names_unless_their_network_is_listed() -> None:
    with with_policy(TargetPolicy("public", targets.parse_networks("10.20.0.0/16"))):
        for target in (
            "http://billing/hooks",
            "http://10.1.2.3/in",
            "http://127.0.0.1/in",
            "http://[::1]/in",
        ):
            with pytest.raises(ValueError, match="public"):
                SubscriptionFields.model_validate(fields(target))
        for target in ("https://hooks.example.com/in", "http://10.20.3.4/in", "http://8.8.8.8/in"):
            SubscriptionFields.model_validate(fields(target))


def test_a_metadata_address_is_allowed_only_when_listed_explicitly() -> None:
    with pytest.raises(ValueError, match="FC_TARGET_NETWORKS"):
        SubscriptionFields.model_validate(fields("http://169.254.169.254/"))
    with with_policy(TargetPolicy(networks=targets.parse_networks("169.254.169.254/32"))):
        SubscriptionFields.model_validate(fields("http://169.254.169.254/"))
        with pytest.raises(ValueError, match="metadata"):
            SubscriptionFields.model_validate(fields("http://169.254.1.1/"))


def test_the_processor_refuses_a_stored_subscription_whose_target_the_policy_refuses() -> None:
    """Written around the API (straight into MongoDB, say), it is invalid, not called."""
    matcher = SubscriptionMatcher()
    stored = {**fields("http://169.254.169.254/latest/"), "id": "metadata"}
    assert matcher.apply(SubscriptionChange("metadata", stored, -1)) is False
    assert len(matcher) == 0
    assert matcher.apply(
        SubscriptionChange("fine", {**fields("https://hooks.example.com/in"), "id": "fine"}, -1)
    )
