"""``fc-dev`` end to end: a real child process, spoken to over HTTP only.

Every test starts its own ``fc-dev`` on a fresh database, so that it can assert
the exact set of dispatch jobs; events reach the processor through the store's
change feed, as in production, so an assertion on jobs tests the whole path.
The child must stop cleanly on SIGTERM after every test.
"""

from __future__ import annotations

import json
import signal
import socket
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from processor.http_errors import MAX_BODY_BYTES
from tests.processor.harness import Publisher, assert_refused, free_port, refusal, wait_until

FC_DEV = Path(sys.executable).with_name("fc-dev")
STARTUP = 15.0  # seconds for the child to serve and its processor to connect
SHOP = "shop"
TARGET = "https://hooks.example.com/in"
PAYMENT = "payments:card:charge:captured"
SHIPPED = "orders:fulfillment:shipment:shipped"
JSON_BODY = {"content-type": "application/json"}


@dataclass
class FcDev:
    """A running ``fc-dev`` child and a client for its API."""

    process: subprocess.Popen[bytes]
    http: httpx.Client
    db: Path
    output: Path  # stdout and stderr together

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def wait_healthy(self) -> None:
        def healthy() -> bool:
            assert self.process.poll() is None, f"fc-dev exited early:\n{self.log()}"
            try:
                response = self.http.get("/health")
            except httpx.TransportError:
                return False
            # Connected: the processor has opened its feed, and sees every event published from now on.
            return response.status_code == 200 and response.json()["change_stream"]["connected"] is True

        wait_until(healthy, timeout=STARTUP, message="fc-dev to report healthy and connected")

    def stop(self, signum: signal.Signals = signal.SIGTERM) -> int:
        self.http.close()
        self.process.send_signal(signum)
        try:
            return self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()

    def subscribe(self, pattern: str, client_id: str = SHOP, **fields: Any) -> str:
        document = {"client_id": client_id, "name": pattern, "event_type_pattern": pattern}
        response = self.http.post(
            "/api/subscriptions", json={"target": TARGET, "pool_code": "p", **document, **fields}
        )
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def publish(self, *events: dict[str, Any]) -> list[str]:
        response = self.http.post("/api/events", json=list(events))
        assert response.status_code == 201, response.text
        ids: list[str] = response.json()["ids"]
        return ids

    def wait_processed(self, events: int) -> None:
        """Until the processor has committed exactly ``events`` events; never more."""

        def processed() -> bool:
            count = int(self.http.get("/health").json()["events_processed"])
            assert count <= events, f"{count} events processed, {events} published"
            return count == events

        wait_until(processed, message=f"{events} events to be processed")

    def pages(self, path: str, limit: int, **filters: str) -> list[list[dict[str, Any]]]:
        pages, after = [], None
        while True:
            cursor: dict[str, int] = {} if after is None else {"after": after}
            response = self.http.get(path, params={**filters, "limit": limit, **cursor})
            assert response.status_code == 200, response.text
            page = response.json()
            pages.append(page["items"])
            after = page["next"]
            if after is None:
                return pages

    def jobs(self, **filters: str) -> list[dict[str, Any]]:
        return [job for page in self.pages("/api/dispatch-jobs", 1000, **filters) for job in page]

    def pairs(self) -> set[tuple[str, str]]:
        jobs = self.jobs()
        pairs = {(job["event_id"], job["subscription_id"]) for job in jobs}
        assert len(pairs) == len(jobs), "a job was listed twice"
        return pairs

    def stored_event_ids(self) -> list[str]:
        with closing(sqlite3.connect(self.db)) as connection:
            return [row[0] for row in connection.execute("SELECT id FROM events ORDER BY seq")]


def start_fc_dev(tmp_path: Path, *options: str) -> FcDev:
    db, output, port = tmp_path / "fc-dev.db", tmp_path / "fc-dev.log", free_port()
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [str(FC_DEV), "--db", str(db), "--port", str(port), *options], stdout=sink, stderr=sink
        )
    dev = FcDev(process, httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10), db, output)
    try:
        dev.wait_healthy()
    except BaseException:
        dev.stop()
        raise
    return dev


@pytest.fixture
def fc_dev(tmp_path: Path) -> Iterator[FcDev]:
    dev = start_fc_dev(tmp_path)
    yield dev
    assert dev.stop() == 0, dev.log()
    assert "Traceback" not in dev.log()


def event(event_id: str, event_type: str, client_id: str = SHOP, **fields: Any) -> dict[str, Any]:
    return {"id": event_id, "type": event_type, "client_id": client_id, **fields}


def test_each_subscription_gets_exactly_the_events_it_matches(fc_dev: FcDev) -> None:
    subscribe = fc_dev.subscribe
    subs = {
        "exact": subscribe(SHIPPED),
        "left wildcard": subscribe("*:fulfillment:shipment:shipped"),
        "middle wildcards": subscribe("orders:*:*:shipped"),
        "source": subscribe("*:*:*:*", filters={"source": ["checkout"]}),
        "metadata": subscribe("orders:*:*:*", filters={"metadata": {"region": "eu", "priority": 1}}),
        "other client": subscribe("orders:*:*:*", client_id="warehouse"),
        "inactive": subscribe("*:*:*:*", active=False),
        "bare query": subscribe(PAYMENT, filters={"payload": ["$.items[?@.sku == 'A1']"]}),
        "exists": subscribe(PAYMENT, filters={"payload": [{"path": "$.refund", "op": "exists"}]}),
    }
    operators = {
        "eq": ("$.amount", 100),
        "ne": ("$.currency", "EUR"),
        "gt": ("$.amount", 100),
        "gte": ("$.amount", 100),
        "lt": ("$.amount", 100),
        "lte": ("$.amount", 100),
        "in": ("$.currency", ["EUR", "GBP"]),
        "nin": ("$.currency", ["EUR", "GBP"]),
    }
    for op, (path, value) in operators.items():
        subs[op] = subscribe(PAYMENT, filters={"payload": [{"path": path, "op": op, "value": value}]})

    eu = {"region": "eu", "priority": 1}
    matches = {
        "shipped": (
            event("shipped", SHIPPED, source="warehouse-app", metadata=eu),
            {"exact", "left wildcard", "middle wildcards", "metadata"},
        ),
        "shipped-us": (
            event("shipped-us", SHIPPED, source="checkout", metadata={"region": "us", "priority": 1}),
            {"exact", "left wildcard", "middle wildcards", "source"},
        ),
        "placed": (event("placed", "orders:checkout:order:placed", metadata=eu), {"metadata"}),
        "warehouse": (event("warehouse", SHIPPED, client_id="warehouse"), {"other client"}),
        "pay-100": (
            event("pay-100", PAYMENT, data={"amount": 100, "currency": "EUR"}),
            {"eq", "gte", "lte", "in"},
        ),
        "pay-250": (
            event(
                "pay-250",
                PAYMENT,
                data={"amount": 250.0, "currency": "USD", "refund": None, "items": [{"sku": "A1"}]},
            ),
            {"ne", "gt", "gte", "nin", "exists", "bare query"},
        ),
        "pay-50": (
            event("pay-50", PAYMENT, data={"amount": 50, "currency": "GBP", "items": [{"sku": "B2"}]}),
            {"ne", "lt", "lte", "in"},
        ),
        # A string is not a number, and a path that selects nothing satisfies no operator.
        "pay-text": (event("pay-text", PAYMENT, data={"amount": "100"}), set()),
        "unmatched": (event("unmatched", "inventory:stock:item:counted", source="erp"), set()),
        "stranger": (event("stranger", SHIPPED, client_id="nobody", source="checkout"), set()),
    }
    invalid = [
        ({"type": "orders:shipped", "client_id": SHOP}, "type"),
        ({"type": "orders:*:shipment:shipped", "client_id": SHOP}, "type"),
        ({"type": SHIPPED}, "client_id"),
        ({"type": SHIPPED, "client_id": ""}, "client_id"),
        ({"type": SHIPPED, "client_id": SHOP, "id": ""}, "id"),
        ({"type": SHIPPED, "client_id": SHOP, "time": "yesterday"}, "time"),
        ({"type": SHIPPED, "client_id": SHOP, "metadata": ["region"]}, "metadata"),
        ({"type": SHIPPED, "client_id": SHOP, "colour": "red"}, "colour"),
    ]
    for document, field in invalid:
        assert_refused(fc_dev.http.post("/api/events", json=document), 422, field)
    assert_refused(fc_dev.http.post("/api/events", json=[1]), 422, "[0]")

    # Published at once after the subscriptions: none of them may be missed.
    fc_dev.publish(*(document for document, _ in matches.values()))
    fc_dev.wait_processed(len(matches))
    assert fc_dev.pairs() == {
        (event_id, subs[name]) for event_id, (_, names) in matches.items() for name in names
    }
    assert fc_dev.stored_event_ids() == list(matches)


def test_an_invalid_subscription_is_refused_naming_the_field(fc_dev: FcDev) -> None:
    valid = {
        "client_id": SHOP,
        "name": "n",
        "event_type_pattern": "orders:*:*:*",
        "target": TARGET,
        "pool_code": "p",
    }
    payload = "filters.payload[0]"
    cases: list[tuple[dict[str, Any], str]] = [
        ({"event_type_pattern": "orders:ship*:*:*"}, "event_type_pattern"),
        ({"event_type_pattern": "orders:*"}, "event_type_pattern"),
        ({"target": "ftp://hooks.example.com"}, "target"),
        ({"name": ""}, "name"),
        ({"active": "yes"}, "active"),
        ({"owner": "me"}, "owner"),
        ({"filters": {"payload": [{"path": "$.a[", "op": "eq", "value": 1}]}}, f"{payload}.condition.path"),
        ({"filters": {"payload": ["$..["]}}, f"{payload}.query"),
        ({"filters": {"payload": [{"path": "$.a", "op": "like", "value": 1}]}}, f"{payload}.condition.op"),
        ({"filters": {"payload": [{"path": "$.a", "op": "in", "value": 1}]}}, f"{payload}.condition"),
        ({"filters": {"payload": [{"path": "$.a", "op": "exists", "value": 1}]}}, f"{payload}.condition"),
        ({"filters": {"payload": [{"path": "$.a", "op": "eq"}]}}, f"{payload}.condition"),
        ({"filters": {"source": "checkout"}}, "filters.source"),
        # Nothing that could hold the processor: backtracking regexes, super-linear paths.
        ({"filters": {"payload": ["$[?match(@, 'a(?=b)')]"]}}, f"{payload}.query"),
        ({"filters": {"payload": ["$..[?@..x]"]}}, f"{payload}.query"),
        (
            {"filters": {"payload": [{"path": "$..a..b", "op": "eq", "value": 1}]}},
            f"{payload}.condition.path",
        ),
        (
            {"filters": {"payload": [{"path": "$.a", "op": "eq", "value": float("nan")}]}},
            f"{payload}.condition.value",
        ),
        ({"filters": {"metadata": {"tier": float("inf")}}}, "filters.metadata"),
    ]
    for change, field in cases:
        body = json.dumps({**valid, **change})  # NaN and Infinity too, as Python's json writes them
        response = fc_dev.http.post("/api/subscriptions", content=body, headers=JSON_BODY)
        assert_refused(response, 422, field)
    missing = {key: value for key, value in valid.items() if key != "pool_code"}
    assert_refused(fc_dev.http.post("/api/subscriptions", json=missing), 422, "pool_code")
    assert_refused(fc_dev.http.post("/api/subscriptions", content=b"{", headers=JSON_BODY), 422, "body")
    assert fc_dev.http.get("/api/subscriptions").json() == {"items": []}


def test_numbers_that_json_cannot_hold_are_refused_and_nothing_is_stored(fc_dev: FcDev) -> None:
    cases = {
        b'{"type": "orders:a:b:c", "client_id": "shop", "data": {"x": NaN}}': "data",
        b'{"type": "orders:a:b:c", "client_id": "shop", "data": [1, -Infinity]}': "data",
        b'{"type": "orders:a:b:c", "client_id": "shop", "data": 1e400}': "data",
        b'{"type": "orders:a:b:c", "client_id": "shop", "metadata": {"m": Infinity}}': "metadata",
        b'[{"type": "orders:a:b:c", "client_id": "shop", "data": {"x": NaN}}]': "[0].data",
    }
    for body, field in cases.items():
        assert_refused(fc_dev.http.post("/api/events", content=body, headers=JSON_BODY), 422, field)
    assert fc_dev.stored_event_ids() == []


def test_a_filter_that_fails_is_listed_and_the_events_other_subscriptions_get_their_jobs(
    fc_dev: FcDev,
) -> None:
    deep_filter = fc_dev.subscribe("orders:*:*:*", filters={"payload": ["$..x"]})
    everything = fc_dev.subscribe("*:*:*:*")
    deep: dict[str, Any] = {"x": 1}
    for _ in range(150):
        deep = {"a": deep}
    fc_dev.publish(event("deep", SHIPPED, data=deep), event("flat", SHIPPED, data={"x": 1}))
    fc_dev.wait_processed(2)
    assert fc_dev.pairs() == {("deep", everything), ("flat", everything), ("flat", deep_filter)}
    (failure,) = fc_dev.http.get("/api/filter-failures").json()["items"]
    assert (failure["event_id"], failure["subscription_id"]) == ("deep", deep_filter)
    assert "recursion" in failure["reason"] and failure["client_id"] == SHOP
    assert fc_dev.http.get("/api/filter-failures", params={"event_id": "flat"}).json()["items"] == []
    assert fc_dev.http.get("/api/dead-letters").json()["items"] == []


def test_pages_stop_by_bytes_as_well_as_by_rows(fc_dev: FcDev) -> None:
    with closing(sqlite3.connect(fc_dev.db)) as connection, connection:
        # Dead letters as large as an older store kept them: the raw document whole.
        connection.executemany(
            "INSERT INTO dead_letters (position, reason, raw, received_at) VALUES (?, 'old', ?, 'now')",
            [(f"p{n}", "r" * 1_500_000) for n in range(12)],
        )
    pages = fc_dev.pages("/api/dead-letters", 1000)
    assert len(pages) > 3 and all(len(page) <= 3 for page in pages)
    assert sorted(letter["position"] for page in pages for letter in page) == sorted(
        f"p{n}" for n in range(12)
    )


def test_pages_list_every_job_once_and_filters_narrow_them(fc_dev: FcDev) -> None:
    orders = fc_dev.subscribe("orders:*:*:*")
    shipped = fc_dev.subscribe(SHIPPED)
    ids = fc_dev.publish(*(event(f"e{n}", SHIPPED if n % 3 == 0 else "orders:a:b:c") for n in range(30)))
    fc_dev.wait_processed(30)

    pages = fc_dev.pages("/api/dispatch-jobs", 7)
    listed = [job["id"] for page in pages for job in page]
    assert [len(page) for page in pages] == [7, 7, 7, 7, 7, 5]  # 30 + 10 jobs
    assert len(set(listed)) == len(listed) == 40
    assert listed == [job["id"] for job in fc_dev.jobs()]

    assert {job["subscription_id"] for job in fc_dev.jobs(event_id="e3")} == {orders, shipped}
    assert {job["event_id"] for job in fc_dev.jobs(subscription_id=shipped)} == set(ids[::3])
    assert len(fc_dev.jobs(client_id=SHOP, status="PENDING")) == 40
    assert fc_dev.jobs(client_id="nobody") == fc_dev.jobs(status="DONE") == []

    get = fc_dev.http.get
    assert_refused(get("/api/dispatch-jobs", params={"limit": 0}), 422, "limit")
    assert_refused(get("/api/dispatch-jobs", params={"limit": 1001}), 422, "limit")
    assert_refused(get("/api/dispatch-jobs", params={"after": "x"}), 422, "after")
    assert_refused(get("/api/dispatch-jobs", params={"subscription": orders}), 422, "subscription")
    assert len(get("/api/dispatch-jobs").json()["items"]) == 40  # default page size 100


def test_a_batch_is_inserted_whole_or_not_at_all(fc_dev: FcDev) -> None:
    subscription = fc_dev.subscribe("orders:*:*:*")
    post = fc_dev.http.post
    batch = [event("a", SHIPPED), event("b", "orders:shipped"), event("c", SHIPPED)]
    assert_refused(post("/api/events", json=batch), 422, "[1].type")

    fc_dev.publish(event("taken", SHIPPED))
    body = assert_refused(
        post("/api/events", json=[event("new", SHIPPED), event("taken", SHIPPED)]), 409, "[1].id"
    )
    assert "'taken'" in body["error"]
    assert_refused(post("/api/events", json=event("taken", SHIPPED)), 409, "id")
    assert_refused(
        post("/api/events", json=[event("twice", SHIPPED), event("twice", SHIPPED)]), 409, "[1].id"
    )

    fc_dev.publish(event("last", SHIPPED))
    fc_dev.wait_processed(2)
    assert fc_dev.stored_event_ids() == ["taken", "last"]
    assert fc_dev.pairs() == {("taken", subscription), ("last", subscription)}


def test_a_body_over_the_limit_is_refused_before_it_is_parsed(fc_dev: FcDev) -> None:
    fc_dev.subscribe("orders:*:*:*")

    def body(size: int) -> bytes:
        envelope = b'{"id": "big", "type": "orders:a:b:c", "client_id": "shop", "data": ""}'
        return envelope.replace(b'""', b'"' + b"x" * (size - len(envelope)) + b'"')

    headers = {"content-type": "application/json"}
    too_large = body(MAX_BODY_BYTES + 1)
    assert_refused(fc_dev.http.post("/api/events", content=too_large, headers=headers), 413, "body")
    # Without a Content-Length the bytes read are counted.
    chunks = iter([too_large[: MAX_BODY_BYTES // 2], too_large[MAX_BODY_BYTES // 2 :]])
    assert_refused(fc_dev.http.post("/api/events", content=chunks, headers=headers), 413, "body")
    assert fc_dev.stored_event_ids() == []

    response = fc_dev.http.post("/api/events", content=body(MAX_BODY_BYTES), headers=headers)
    assert response.status_code == 201, response.text
    fc_dev.wait_processed(1)
    assert [job["event_id"] for job in fc_dev.jobs()] == ["big"]


def test_subscription_changes_apply_to_the_events_published_after_them(fc_dev: FcDev) -> None:
    http = fc_dev.http
    subscription = fc_dev.subscribe("orders:*:*:*")
    url = f"/api/subscriptions/{subscription}"
    fc_dev.publish(event("before-patch", SHIPPED))  # at once: the new subscription must be seen

    response = http.patch(url, json={"active": False})
    assert response.status_code == 200 and response.json()["active"] is False, response.text
    fc_dev.publish(event("while-inactive", SHIPPED))

    # A patch is validated with the subscription it makes, and refused whole.
    assert_refused(
        http.patch(url, json={"active": True, "event_type_pattern": "orders:*"}), 422, "event_type_pattern"
    )
    assert_refused(http.patch(url, json={"name": None}), 422, "name")
    assert_refused(http.patch(url, json={"client_id": "other"}), 422, "client_id")
    assert_refused(http.patch("/api/subscriptions/nope", json={"active": True}), 404)
    assert http.get(url).json()["active"] is False

    response = http.patch(url, json={"active": True, "event_type_pattern": "billing:*:*:*"})
    assert response.status_code == 200, response.text
    assert response.json() == {
        "id": subscription,
        "client_id": SHOP,
        "name": "orders:*:*:*",
        "event_type_pattern": "billing:*:*:*",
        "target": TARGET,
        "pool_code": "p",
        "active": True,
        "filters": None,
    }
    fc_dev.publish(
        event("order-after-patch", SHIPPED), event("billing-after-patch", "billing:invoice:invoice:issued")
    )

    other = fc_dev.subscribe("billing:*:*:*", client_id="other")
    assert [s["id"] for s in http.get("/api/subscriptions", params={"client_id": SHOP}).json()["items"]] == [
        subscription
    ]
    assert http.delete(url).status_code == 204
    assert_refused(http.get(url), 404)
    assert_refused(http.delete(url), 404)
    assert [s["id"] for s in http.get("/api/subscriptions").json()["items"]] == [other]
    fc_dev.publish(event("after-delete", "billing:invoice:invoice:issued"))

    fc_dev.wait_processed(5)
    assert fc_dev.pairs() == {("before-patch", subscription), ("billing-after-patch", subscription)}


def test_stats_and_metrics_count_what_was_published(fc_dev: FcDev) -> None:
    orders = fc_dev.subscribe("orders:*:*:*")
    checkout = fc_dev.subscribe("orders:checkout:*:*")
    times = [f"2024-05-0{day}T10:00:00Z" for day in range(1, 6)]
    placed = [event(f"p{n}", "orders:checkout:order:placed", time=times[n]) for n in range(3)]
    shipped = [event(f"s{n}", SHIPPED, time=times[n + 3]) for n in range(2)]
    billing = event("b", "billing:invoice:invoice:issued", client_id="acme")
    fc_dev.publish(*placed, *shipped, billing)
    fc_dev.wait_processed(6)

    stats = fc_dev.http.get("/api/stats").json()
    assert stats["event_types"] == {
        "orders:checkout:order:placed": 3,
        SHIPPED: 2,
        "billing:invoice:invoice:issued": 1,
    }
    assert {key: value["jobs_created"] for key, value in stats["subscriptions"].items()} == {
        orders: 5,
        checkout: 3,
    }
    assert all(value["last_matched_at"] for value in stats["subscriptions"].values())
    assert stats["clients"][SHOP] == {
        "events": 5,
        "jobs": 8,
        "last_event_time": "2024-05-05T10:00:00.000000Z",
    }
    assert stats["clients"]["acme"]["events"] == 1 and stats["clients"]["acme"]["jobs"] == 0

    response = fc_dev.http.get("/metrics")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    samples = {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }
    assert samples["fc_stream_events_processed_total"] == 6
    assert (
        samples["fc_stream_dispatch_jobs_created_total"]
        == samples["fc_stream_subscriptions_matched_total"]
        == 8
    )

    health = fc_dev.http.get("/health").json()
    assert health["status"] == "UP" and health["events_processed"] == 6 and health["last_error"] is None
    assert fc_dev.http.get("/live").json() == {"status": "UP"}
    assert fc_dev.http.get("/ready").status_code == 200
    assert_refused(fc_dev.http.get("/api/no-such-thing"), 404)


def test_events_inserted_with_plain_sql_are_processed_or_dead_lettered(fc_dev: FcDev) -> None:
    subscription = fc_dev.subscribe("orders:*:*:*")
    other_process = Publisher(fc_dev.db)
    other_process.publish("orders:a:b:c", SHOP, {"n": 1}, id="sql-valid")
    other_process.publish("orders:a:b:c", SHOP, "{not json", id="sql-undecodable")
    other_process.publish("orders:a:b:c", None, {"n": 2}, id="sql-no-client")
    other_process.publish("orders:a:b", SHOP, None, id="sql-bad-type")
    fc_dev.wait_processed(4)

    assert fc_dev.pairs() == {("sql-valid", subscription)}
    letters = [letter for page in fc_dev.pages("/api/dead-letters", 2) for letter in page]
    reasons = {letter["event_id"]: letter["reason"] for letter in letters}
    assert reasons.keys() == {"sql-undecodable", "sql-no-client", "sql-bad-type"}
    assert reasons["sql-undecodable"].startswith("data: not valid JSON")
    assert reasons["sql-no-client"].startswith("client_id:")
    assert reasons["sql-bad-type"].startswith("type:")
    assert all("sql-" in letter["raw"] for letter in letters)


def test_the_demo_shows_jobs_and_says_where_to_look(tmp_path: Path) -> None:
    dev = start_fc_dev(tmp_path, "--demo")
    try:
        wait_until(lambda: "Look around:" in dev.log(), message="the demo's guide")
        guide = dev.log()
        for path in ("/api/dispatch-jobs", "/api/stats", "/api/dead-letters", "/api/explain", "/health"):
            assert f"{dev.http.base_url.join(path)}" in guide
        assert "not 'charges of 100 or more': filters.payload[0]: $.amount gte 100 fails" in guide
        assert f"See it all on one page: {dev.http.base_url.join('/')}" in guide
        jobs = dev.jobs()
        assert jobs
        active = {s["id"] for s in dev.http.get("/api/subscriptions").json()["items"] if s["active"]}
        assert {job["subscription_id"] for job in jobs} <= active
    finally:
        assert dev.stop(signal.SIGINT) == 0, dev.log()


@pytest.mark.parametrize(
    ("flags", "named"),
    [
        (["--port", "99999"], "--port"),
        (["--port", "0"], "--port"),
        (["--db", "/no-such-directory-here/x.db"], "--db"),
    ],
)
def test_fc_dev_refuses_a_bad_flag_in_one_line_with_exit_2(
    tmp_path: Path, flags: list[str], named: str
) -> None:
    assert named in refusal_of_fc_dev(tmp_path, *flags)


def refusal_of_fc_dev(tmp_path: Path, *flags: str, db: Path | None = None) -> str:
    """The one line ``fc-dev`` exits 2 with, given ``flags``."""
    return refusal([str(FC_DEV), "--db", str(db or tmp_path / "x.db"), *flags])


def test_fc_dev_on_a_port_in_use_says_which_and_exits_2(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = str(taken.getsockname()[1])
        line = refusal_of_fc_dev(tmp_path, "--port", port)
    assert f"127.0.0.1:{port}" in line and "in use" in line, line


def test_a_second_fc_dev_on_the_same_db_exits_2_naming_the_first_s_pid(fc_dev: FcDev, tmp_path: Path) -> None:
    line = refusal_of_fc_dev(tmp_path, "--port", str(free_port()), db=fc_dev.db)
    assert "--db" in line and f"pid {fc_dev.process.pid}" in line, line


def test_fc_dev_says_serving_once_a_client_can_connect(tmp_path: Path) -> None:
    db, output, port = tmp_path / "fc-dev.db", tmp_path / "fc-dev.log", free_port()
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [str(FC_DEV), "--db", str(db), "--port", str(port)], stdout=sink, stderr=sink
        )
    try:
        wait_until(
            lambda: "serving" in output.read_text(), timeout=STARTUP, message="fc-dev to say it serves"
        )
        with socket.create_connection(("127.0.0.1", port), timeout=10):
            pass  # refused before: the line came before the port was bound
        assert httpx.get(f"http://127.0.0.1:{port}/live", timeout=10).status_code in (200, 503)
    finally:
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=30) == 0, output.read_text()


def test_explain_says_which_subscriptions_match_a_stored_event_and_why_the_others_do_not(
    fc_dev: FcDev,
) -> None:
    big = fc_dev.subscribe(PAYMENT, filters={"payload": [{"path": "$.amount", "op": "gte", "value": 100}]})
    every = fc_dev.subscribe("payments:*:*:*")
    paused = fc_dev.subscribe("*:*:*:*", active=False)
    orders = fc_dev.subscribe("orders:*:*:*")
    fc_dev.subscribe("*:*:*:*", client_id="warehouse")
    fc_dev.publish(event("small", PAYMENT, data={"amount": 20}))
    fc_dev.wait_processed(1)

    response = fc_dev.http.post("/api/explain", json={"event_id": "small"})
    assert response.status_code == 200, response.text
    explanation = response.json()
    assert explanation["event"] == {"id": "small", "type": PAYMENT, "client_id": SHOP, "stored": True}
    verdicts = {verdict["subscription_id"]: verdict for verdict in explanation["verdicts"]}
    assert verdicts.keys() == {big, every, paused, orders}, "the warehouse's subscription is not the shop's"
    assert explanation["matches"] == 1
    (job,) = fc_dev.jobs(event_id="small")
    assert verdicts[every]["matches"] and verdicts[every]["job_id"] == job["id"]
    assert verdicts[big]["field"] == "filters.payload[0]" and "20" in verdicts[big]["reason"]
    assert verdicts[paused]["field"] == "active"
    assert verdicts[orders]["field"] == "event_type_pattern" and "'payments'" in verdicts[orders]["reason"]


def test_explain_judges_an_event_typed_but_not_stored_and_refuses_a_request_naming_the_field(
    fc_dev: FcDev,
) -> None:
    big = fc_dev.subscribe(PAYMENT, filters={"payload": [{"path": "$.amount", "op": "gte", "value": 100}]})
    typed = {"type": PAYMENT, "client_id": SHOP, "data": {"amount": 250}}
    explanation = fc_dev.http.post("/api/explain", json={"event": typed}).json()
    assert explanation["event"]["stored"] is False and explanation["event"]["id"] is None
    (verdict,) = explanation["verdicts"]
    assert (verdict["subscription_id"], verdict["matches"], verdict["job_id"]) == (big, True, None)
    assert fc_dev.stored_event_ids() == [], "explaining an event does not publish it"

    assert_refused(fc_dev.http.post("/api/explain", json={"event_id": "nowhere"}), 404)
    assert "give event_id" in assert_refused(fc_dev.http.post("/api/explain", json={}), 422, "body")["error"]
    both = {"event_id": "x", "event": typed}
    assert "not both" in assert_refused(fc_dev.http.post("/api/explain", json=both), 422, "body")["error"]
    assert_refused(
        fc_dev.http.post("/api/explain", json={"event": {**typed, "type": "a:b"}}), 422, "event.type"
    )


def test_a_dead_letter_mended_in_the_store_is_redriven_once_into_its_job(fc_dev: FcDev) -> None:
    subscription = fc_dev.subscribe("orders:*:*:*")
    Publisher(fc_dev.db).publish("orders:a:b:c", None, {"n": 1}, id="no-client")
    Publisher(fc_dev.db).publish("orders:a:b", SHOP, None, id="bad-type")
    fc_dev.wait_processed(2)
    with closing(sqlite3.connect(fc_dev.db)) as connection, connection:
        connection.execute("UPDATE events SET client_id = ? WHERE id = 'no-client'", (SHOP,))

    first = fc_dev.http.post("/api/redrive/dead-letters", json={})
    assert first.status_code == 200, first.text
    report = first.json()
    assert (report["examined"], report["created"], report["resolved"], report["left"]) == (2, 1, 1, 1)
    assert fc_dev.pairs() == {("no-client", subscription)}
    ((reason, count),) = report["reasons"].items()
    assert count == 1 and reason.startswith("still invalid: type:")
    (letter,) = fc_dev.http.get("/api/dead-letters").json()["items"]
    assert letter["event_id"] == "bad-type"

    again = fc_dev.http.post("/api/redrive/dead-letters", json={"event_id": "bad-type"}).json()
    assert (again["examined"], again["created"], again["left"]) == (1, 0, 1)
    assert fc_dev.http.get("/api/stats").json()["subscriptions"][subscription]["jobs_created"] == 1


def test_a_backfill_reads_at_most_its_limit_resumes_from_next_and_a_second_run_creates_nothing(
    fc_dev: FcDev,
) -> None:
    fc_dev.publish(*(event(f"past-{n}", SHIPPED) for n in range(5)))
    fc_dev.wait_processed(5)
    late = fc_dev.subscribe(SHIPPED)

    first = fc_dev.http.post("/api/backfill", json={"subscription_id": late, "limit": 3}).json()
    assert (first["examined"], first["created"]) == (3, 3) and first["next"] is not None
    assert "subscriptions as they stood" in first["note"]
    rest = fc_dev.http.post("/api/backfill", json={"subscription_id": late, "after": first["next"]}).json()
    assert (rest["examined"], rest["created"], rest["next"]) == (2, 2, None)
    assert fc_dev.pairs() == {(f"past-{n}", late) for n in range(5)}

    again = fc_dev.http.post("/api/backfill", json={"subscription_id": late}).json()
    assert (again["created"], again["skipped"]) == (0, 5)
    assert fc_dev.http.get("/api/stats").json()["subscriptions"][late]["jobs_created"] == 5

    assert_refused(fc_dev.http.post("/api/backfill", json={"subscription_id": "nobody"}), 404)
    for limit in ("5", True, 0, 10_001):
        given = {"subscription_id": late, "limit": limit}
        assert_refused(fc_dev.http.post("/api/backfill", json=given), 422, "limit")
    paused = fc_dev.subscribe(SHIPPED, active=False)
    assert_refused(
        fc_dev.http.post("/api/backfill", json={"subscription_id": paused}), 409, "subscription_id"
    )
    bad_cursor = {"subscription_id": late, "after": "not-a-position"}
    assert_refused(fc_dev.http.post("/api/backfill", json=bad_cursor), 422, "after")


def test_a_filter_failure_is_retried_once_its_filter_is_fixed(fc_dev: FcDev) -> None:
    deep_filter = fc_dev.subscribe("orders:*:*:*", filters={"payload": ["$..x"]})
    deep: dict[str, Any] = {"x": 1}
    for _ in range(150):
        deep = {"a": deep}
    fc_dev.publish(event("deep", SHIPPED, data=deep))
    fc_dev.wait_processed(1)
    still = fc_dev.http.post("/api/redrive/filter-failures", json={"subscription_id": deep_filter}).json()
    assert (still["examined"], still["resolved"], still["left"]) == (1, 0, 1)

    patched = {"filters": {"payload": ["$.a"]}}
    assert fc_dev.http.patch(f"/api/subscriptions/{deep_filter}", json=patched).status_code == 200
    fixed = fc_dev.http.post("/api/redrive/filter-failures", json={}).json()
    assert (fixed["examined"], fixed["created"], fixed["resolved"]) == (1, 1, 1)
    assert fc_dev.pairs() == {("deep", deep_filter)}
    assert fc_dev.http.get("/api/filter-failures").json()["items"] == []


def test_recent_events_come_newest_first_with_the_jobs_each_became(fc_dev: FcDev) -> None:
    subscription = fc_dev.subscribe(SHIPPED)
    fc_dev.publish(event("one", SHIPPED), event("two", PAYMENT), event("three", SHIPPED))
    fc_dev.wait_processed(3)
    first = fc_dev.http.get("/api/events", params={"limit": 2}).json()
    assert [item["id"] for item in first["items"]] == ["three", "two"]
    assert [job["subscription_id"] for job in first["items"][0]["jobs"]] == [subscription]
    assert first["items"][1]["jobs"] == [] and first["items"][1]["jobs_total"] == 0
    older = fc_dev.http.get("/api/events", params={"before": first["next"]}).json()
    assert [item["id"] for item in older["items"]] == ["one"] and older["next"] is None


def test_recent_events_stop_by_bytes_whatever_a_row_written_around_the_api_holds(fc_dev: FcDev) -> None:
    with closing(sqlite3.connect(fc_dev.db)) as connection, connection:
        connection.execute(
            "INSERT INTO events (id, type, source) VALUES ('latin-1', 'a:b:c:d', CAST(x'ff41' AS TEXT))"
        )
        connection.executemany(
            "INSERT INTO events (id, type, client_id) VALUES (?, ?, ?)",
            [(f"big-{n}", "t" * 1_500_000, n) for n in range(12)],  # a client_id stored as a number
        )
    pages, before = [], None
    while True:
        response = fc_dev.http.get(
            "/api/events", params={"limit": 1000, **({"before": before} if before else {})}
        )
        assert response.status_code == 200, response.text
        pages.append(response.json()["items"])
        before = response.json()["next"]
        if before is None:
            break
    assert len(pages) > 3 and all(len(page) <= 3 for page in pages)
    listed = [event for page in pages for event in page]
    assert [event["id"] for event in listed] == [*(f"big-{n}" for n in reversed(range(12))), "latin-1"]
    assert listed[-1]["source"] == "\ufffdA", "text that is not UTF-8, shown as far as it can be"
    assert {event["client_id"] for event in listed[:-1]} == {str(n) for n in range(12)}


def test_a_subscription_whose_text_is_not_utf8_is_skipped_and_the_others_go_on(fc_dev: FcDev) -> None:
    good = fc_dev.subscribe("orders:*:*:*")
    with closing(sqlite3.connect(fc_dev.db)) as connection, connection:
        connection.execute(
            "INSERT INTO subscriptions (id, client_id, name, event_type_pattern, target, pool_code) "
            "VALUES ('latin-1', ?, CAST(x'ff41' AS TEXT), 'orders:*:*:*', ?, 'p')",
            (SHOP, TARGET),
        )
    fc_dev.publish(event("after", SHIPPED))
    fc_dev.wait_processed(1)
    assert fc_dev.pairs() == {("after", good)}

    listed = {s["id"]: s for s in fc_dev.http.get("/api/subscriptions").json()["items"]}
    assert listed["latin-1"]["name"] == "\ufffdA" and "name" in listed["latin-1"]["invalid"]
    verdicts = fc_dev.http.post("/api/explain", json={"event_id": "after"}).json()["verdicts"]
    skipped = {v["subscription_id"]: v for v in verdicts}["latin-1"]
    assert (skipped["matches"], skipped["field"]) == (False, "subscription")
    mended = fc_dev.http.patch("/api/subscriptions/latin-1", json={"name": "mended"})
    assert mended.status_code == 200, mended.text
    fc_dev.publish(event("later", SHIPPED))
    fc_dev.wait_processed(2)
    assert fc_dev.pairs() == {("after", good), ("later", good), ("later", "latin-1")}
