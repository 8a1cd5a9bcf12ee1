"""``fc-dev``'s page in a real browser: headless Chromium, driven by Selenium,
on a real ``fc-dev`` child process. One browser and one ``fc-dev`` serve the
module, so every test works with a client id of its own; it waits on what
the page shows, never on a timer.
"""

from __future__ import annotations

import itertools
import json
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path
from typing import Any, Literal, TypeVar
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import (
    NoAlertPresentException,
    NoSuchElementException,
    StaleElementReferenceException,
)
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement
from selenium.webdriver.support.ui import WebDriverWait

from processor.page import SECURITY_POLICY, Rates
from tests.processor.harness import Clock, Publisher
from tests.processor.test_api import FcDev, start_fc_dev

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
BROWSER_ARGUMENTS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--no-first-run",
)
TIMEOUT = 30.0  # seconds a condition may take: the panels refresh every 2 s
PLACED = "orders:checkout:order:placed"
TARGET = "https://hooks.example.com/in"
# Each would set window.pwned, or add an element, if the page let it run.
HOSTILE_NAME = '<img src=x id=injected onerror="window.pwned = 1; alert(1)">'
HOSTILE_CLIENT = "<script>window.pwned = 2</script>"
HOSTILE_SOURCE = "<b id=injected>bold</b><script>window.pwned = 3</script>"
T = TypeVar("T")
clients = itertools.count()


def client_id(hint: str) -> str:
    """A client of the test's own: the module's tests share one fc-dev."""
    return f"{hint}-{next(clients)}"


@pytest.fixture(scope="module")
def fc_dev(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FcDev]:
    dev = start_fc_dev(tmp_path_factory.mktemp("page"))
    yield dev
    assert dev.stop() == 0, dev.log()
    assert "Traceback" not in dev.log()


@pytest.fixture(scope="module")
def browser() -> Iterator[WebDriver]:
    if not (CHROMIUM.exists() and CHROMEDRIVER.exists()):
        pytest.fail("chromium not found: apt-get install -y chromium chromium-driver", pytrace=False)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for argument in BROWSER_ARGUMENTS:
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(str(CHROMEDRIVER)))
    yield driver
    driver.quit()


class Page:
    """The page, as a person uses it. Its panels are replaced every 2 s, so an
    element is found again whenever a refresh replaced it in the meantime."""

    def __init__(self, browser: WebDriver, fc_dev: FcDev) -> None:
        self.browser = browser
        self.url = f"{fc_dev.http.base_url}/"
        browser.get(self.url)

    def until(self, condition: Callable[[WebDriver], Literal[False] | T], message: str) -> T:
        wait = WebDriverWait(
            self.browser,
            TIMEOUT,
            ignored_exceptions=(NoSuchElementException, StaleElementReferenceException),
        )
        return wait.until(condition, message)

    def text(self, css: str) -> str:
        """All the text of what ``css`` finds, hidden or not (as ``textContent``)."""
        return self.until(lambda browser: content(browser.find_element(By.CSS_SELECTOR, css)), css)

    def shows(self, css: str, text: str) -> str:
        """Waits until what ``css`` finds holds ``text``; all its text."""

        def holding(browser: WebDriver) -> Literal[False] | str:
            found = content(browser.find_element(By.CSS_SELECTOR, css))
            return found if text in found else False

        return self.until(holding, f"{css} to show {text!r}")

    def gone(self, css: str) -> None:
        self.until(lambda browser: not browser.find_elements(By.CSS_SELECTOR, css), f"{css} to go")

    def click(self, css: str) -> None:
        """Clicks what ``css`` finds: a click on an element replaced meanwhile is
        refused (stale) rather than made, so trying again clicks once."""

        def clicked(browser: WebDriver) -> bool:
            browser.find_element(By.CSS_SELECTOR, css).click()
            return True

        self.until(clicked, f"{css} to be clicked")

    def submit(self, form: str, **fields: str) -> None:
        for name, value in fields.items():
            field = self.browser.find_element(By.CSS_SELECTOR, f"#{form} [name={name}]")
            field.clear()
            field.send_keys(value)
        self.browser.find_element(By.CSS_SELECTOR, f"#{form} button").click()

    def rows(self, css: str) -> list[list[str]]:
        """The cells of the table rows ``css`` finds, once there are any."""
        return self.until(
            lambda browser: [
                [content(cell) for cell in row.find_elements(By.TAG_NAME, "td")]
                for row in browser.find_elements(By.CSS_SELECTOR, css)
            ],
            f"rows {css}",
        )

    def report(self, css: str) -> dict[str, str]:
        """A re-drive's report as the page shows it, once it is there."""
        self.shows(css, "examined")
        terms = self.browser.find_elements(By.CSS_SELECTOR, f"{css} dt")
        return {
            content(term): content(term.find_element(By.XPATH, "following-sibling::dd[1]")) for term in terms
        }


def content(element: WebElement) -> str:
    return str(element.get_attribute("textContent")).strip()


def console(browser: WebDriver) -> list[dict[str, Any]]:
    """What the page logged since the last call (Selenium leaves ``get_log`` untyped)."""
    entries: list[dict[str, Any]] = browser.get_log("browser")  # type: ignore[no-untyped-call]
    return entries


@pytest.fixture
def page(browser: WebDriver, fc_dev: FcDev) -> Page:
    return Page(browser, fc_dev)


def subscribe(fc_dev: FcDev, client: str, **fields: Any) -> str:
    document = {"client_id": client, "name": f"{client} orders", "event_type_pattern": "orders:*:*:*"}
    response = fc_dev.http.post(
        "/api/subscriptions", json={"target": TARGET, "pool_code": "p", **document, **fields}
    )
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def test_a_subscription_created_in_the_page_receives_an_event_published_in_it_with_its_jobs_and_explanation(
    page: Page, fc_dev: FcDev
) -> None:
    client = client_id("shop")
    page.submit("subscribe", client_id=client, name="placed orders", event_type_pattern=PLACED, target=TARGET)
    page.shows("#subscribe-out", "created subscription placed orders")
    (subscription,) = fc_dev.http.get("/api/subscriptions", params={"client_id": client}).json()["items"]
    page.shows(f'#subscriptions [data-subscription-id="{subscription["id"]}"]', "placed orders")

    page.submit("publish", type=PLACED, client_id=client, data='{"order": "o-1", "amount": 42}')
    event_id = page.text("#publish-out .event-id")
    row = f'#events [data-event-id="{event_id}"]'
    page.shows(row, "placed orders: PENDING")
    (job,) = fc_dev.jobs(event_id=event_id)
    assert job["subscription_id"] == subscription["id"]
    assert page.text(f'{row} [data-job-id="{job["id"]}"]') == "placed orders: PENDING"

    page.click(f"{row} button")
    page.shows("#explain-out", f"stored as {event_id}")
    verdict = f'#explain-out tr[data-subscription-id="{subscription["id"]}"]'
    page.shows(verdict, job["id"])
    assert page.rows(verdict) == [["yes", "placed orders", "", "", job["id"]]]
    assert f"{PLACED} from {client}" in page.text("#explain-out p")


def test_an_event_typed_into_the_explain_tool_gets_the_apis_verdicts_and_is_not_stored(
    page: Page, fc_dev: FcDev
) -> None:
    client = client_id("typed")
    big = subscribe(fc_dev, client, filters={"payload": [{"path": "$.amount", "op": "gte", "value": 100}]})
    typed = {"type": PLACED, "client_id": client, "data": {"amount": 5}}
    page.submit("explain", event=json.dumps(typed))
    page.shows("#explain-out", "not stored")

    (expected,) = fc_dev.http.post("/api/explain", json={"event": typed}).json()["verdicts"]
    assert expected["matches"] is False and expected["field"] and expected["reason"]
    shown = [expected[key] for key in ("name", "field", "reason")]
    assert page.rows(f'#explain-out tr[data-subscription-id="{big}"]') == [["no", *shown, ""]]
    assert fc_dev.http.get("/api/dispatch-jobs", params={"client_id": client}).json()["items"] == []


def test_a_subscription_the_api_refuses_shows_the_field_and_problem_it_gave(
    page: Page, fc_dev: FcDev
) -> None:
    refused = {
        "client_id": client_id("refused"),
        "name": "half a pattern",
        "event_type_pattern": "orders:*",
        "target": TARGET,
        "pool_code": "p",
    }
    page.submit("subscribe", **refused)
    error = fc_dev.http.post("/api/subscriptions", json=refused).json()
    assert [field["field"] for field in error["fields"]] == ["event_type_pattern"]

    page.shows("#subscribe-out", f"refused (422): {error['error']}")
    problems = page.browser.find_elements(By.CSS_SELECTOR, "#subscribe-out .fields li")
    assert [content(item) for item in problems] == [f"{f['field']}: {f['problem']}" for f in error["fields"]]
    listed = fc_dev.http.get("/api/subscriptions", params={"client_id": refused["client_id"]}).json()
    assert listed["items"] == []


def test_a_subscription_stored_around_the_api_that_breaks_the_contract_is_listed_with_the_reason(
    page: Page, fc_dev: FcDev
) -> None:
    client = client_id("around")
    broken = Publisher(fc_dev.db).subscribe(f"{client}-half", "orders:*", client)
    (listed,) = fc_dev.http.get("/api/subscriptions", params={"client_id": client}).json()["items"]
    assert listed["invalid"]
    row = f'#subscriptions [data-subscription-id="{broken}"]'
    page.shows(row, f"invalid: {listed['invalid']}")
    assert page.rows(row)[0][:5] == [f"subscription {broken}{broken}", client, "orders:*", "", "yes"]


def test_filters_that_are_not_json_are_refused_in_the_page_and_nothing_is_sent(
    page: Page, fc_dev: FcDev
) -> None:
    client = client_id("typo")
    page.submit(
        "subscribe",
        client_id=client,
        name="typo",
        event_type_pattern=PLACED,
        target=TARGET,
        filters="{payload",
    )
    page.shows("#subscribe-out", "not sent")
    assert page.text("#subscribe-out .fields code") == "filters"
    assert fc_dev.http.get("/api/subscriptions", params={"client_id": client}).json()["items"] == []


def test_the_page_loads_everything_from_fc_dev_itself_and_runs_without_errors(
    browser: WebDriver, fc_dev: FcDev
) -> None:
    console(browser)  # what earlier tests left, refusals among them
    page = Page(browser, fc_dev)
    page.shows("#health [data-health=status]", "UP")
    assert browser.execute_script("return typeof htmx") == "object"

    origin = urlsplit(page.url)
    loaded = browser.execute_script(
        "return [...document.querySelectorAll('[src], [href]')].map(e => e.src || e.href)"
    )
    assert loaded, "the page names no file"
    for url in loaded:
        assert urlsplit(url)[:2] == origin[:2], f"{url} is not on fc-dev"
        assert fc_dev.http.get(url).status_code == 200, url
    assert fc_dev.http.get("/").headers["content-security-policy"] == SECURITY_POLICY
    assert [entry for entry in console(browser) if entry["level"] == "SEVERE"] == []


def test_hostile_names_clients_sources_and_types_are_shown_as_text_and_never_run(
    page: Page, fc_dev: FcDev
) -> None:
    client = client_id(HOSTILE_CLIENT)
    page.submit("subscribe", client_id=client, name=HOSTILE_NAME, event_type_pattern=PLACED, target=TARGET)
    page.shows("#subscribe-out", f"created subscription {HOSTILE_NAME}")
    (event_id,) = fc_dev.publish({"type": PLACED, "client_id": client, "source": HOSTILE_SOURCE})
    # Written around the API: the type breaks the contract, and the event becomes a dead letter.
    dead = Publisher(fc_dev.db).publish(HOSTILE_NAME, client)

    page.shows("#subscriptions", HOSTILE_NAME)
    published = page.shows(f'#events [data-event-id="{event_id}"]', f"{HOSTILE_NAME}: PENDING")
    assert HOSTILE_SOURCE in published and HOSTILE_CLIENT in published
    page.shows(f'#events [data-event-id="{dead}"]', HOSTILE_NAME)
    page.shows(f'#dead-letters [data-event-id="{dead}"]', dead)
    page.click(f'#events [data-event-id="{event_id}"] button')
    page.shows("#explain-out", f"{PLACED} from {client}")
    page.shows("#explain-out table", HOSTILE_NAME)

    browser = page.browser
    assert browser.execute_script("return window.pwned") is None
    assert browser.find_elements(By.CSS_SELECTOR, "#injected, img, b") == []
    assert len(browser.find_elements(By.TAG_NAME, "script")) == 2  # htmx and the page's own
    with pytest.raises(NoAlertPresentException):
        browser.switch_to.alert.dismiss()


def test_a_dead_letter_mended_in_the_store_and_redriven_from_the_page_becomes_its_job(
    page: Page, fc_dev: FcDev
) -> None:
    client = client_id("mended")
    subscription = subscribe(fc_dev, client)
    event_id = Publisher(fc_dev.db).publish(PLACED, None, {"order": "o-1"})  # no client: a dead letter
    letter = f'#dead-letters [data-event-id="{event_id}"]'
    page.shows(letter, event_id)
    with closing(sqlite3.connect(fc_dev.db)) as connection, connection:
        connection.execute("UPDATE events SET client_id = ? WHERE id = ?", (client, event_id))

    page.click(f"{letter} button")
    report = page.report("#dead-letters-out")
    assert (report["examined"], report["created"], report["resolved"], report["left"]) == ("1", "1", "1", "0")
    page.gone(letter)
    page.shows(f'#events [data-event-id="{event_id}"]', f"{client} orders: PENDING")
    assert [job["subscription_id"] for job in fc_dev.jobs(event_id=event_id)] == [subscription]


def test_a_filter_failure_redriven_from_the_page_once_its_filter_is_fixed_becomes_its_job(
    page: Page, fc_dev: FcDev
) -> None:
    client = client_id("deep")
    subscription = subscribe(fc_dev, client, filters={"payload": ["$..x"]})
    deep: dict[str, Any] = {"x": 1}
    for _ in range(150):  # deeper than a descendant query may go: the filter fails
        deep = {"a": deep}
    (event_id,) = fc_dev.publish({"type": PLACED, "client_id": client, "data": deep})
    failure = f'#filter-failures [data-event-id="{event_id}"][data-subscription-id="{subscription}"]'
    page.shows(failure, f"{client} orders")
    fixed = fc_dev.http.patch(f"/api/subscriptions/{subscription}", json={"filters": {"payload": ["$.a"]}})
    assert fixed.status_code == 200, fixed.text

    page.click(f"{failure} button")
    report = page.report("#filter-failures-out")
    assert (report["examined"], report["created"], report["resolved"]) == ("1", "1", "1")
    page.gone(failure)
    page.shows(f'#events [data-event-id="{event_id}"]', f"{client} orders: PENDING")
    assert [job["subscription_id"] for job in fc_dev.jobs(event_id=event_id)] == [subscription]


def test_the_page_and_its_panels_stay_out_of_the_openapi_document(fc_dev: FcDev) -> None:
    paths = fc_dev.http.get("/openapi.json").json()["paths"]
    assert [path for path in paths if not path.startswith(("/api/", "/health", "/live", "/ready"))] == []
    assert fc_dev.http.get("/page/nothing").json()["error"].startswith("no panel 'nothing'")


def test_rates_are_measured_over_the_window_from_the_last_poll_before_it() -> None:
    clock = Clock()
    rates = Rates(window=10.0, clock=clock)
    assert rates.sample(events=0, jobs=0) is None, "one poll is no rate"
    start = clock.now
    for second in range(2, 21, 2):
        clock.now = start + second
        measured = rates.sample(events=second * 5, jobs=second)
    assert measured == (5.0, 1.0)
    clock.now = start + 22
    # The rate counts from the poll at 12 s, the last one at least 10 s before this one.
    assert rates.sample(events=210, jobs=22) == ((210 - 60) / 10, (22 - 12) / 10)
