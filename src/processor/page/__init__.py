"""The page of ``fc-dev`` at ``/``: what a newcomer would otherwise learn through
``curl``, on one screen.

The lists (counts, subscriptions, recent events, dead letters, filter failures)
are HTML rendered here from the catalog, escaped by Jinja2's autoescape (events
and subscriptions are anyone's input), and refreshed by htmx from
``/page/<panel>``. The forms and buttons send JSON to the API itself
(``static/page.js``), so that the page can do nothing the API does not, and
shows its answers and refusals as the API gives them. htmx is vendored under
``static/``: no CDN, no build step, and the page works offline. None of these
routes is in the OpenAPI document.
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, PackageLoader, StrictUndefined

from processor.http_errors import ApiError
from processor.stores.sqlite import Catalog, subscription_document

RECENT_EVENTS = 20
LISTED = 50  # dead letters and filter failures a panel lists; the API pages through them all
LISTED_SUBSCRIPTIONS = 200  # the API lists them all
CELL_SHOWN = 300  # characters of any one value: a row written around the API may hold megabytes
RATE_WINDOW = 10.0  # seconds of polls a rate is measured over
# The page loads from and sends to this origin only, whatever the data it shows holds.
SECURITY_POLICY = "default-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"


class Rates:
    """Events and jobs a second, from the counts the polls of the page saw over
    the last ``window`` seconds (and the poll before those): no metrics of its
    own, and any number of open pages measure the same."""

    def __init__(self, window: float = RATE_WINDOW, clock: Callable[[], float] = time.monotonic) -> None:
        self._window = window
        self._clock = clock
        self._lock = threading.Lock()  # the API serves from a pool of threads
        self._samples: deque[tuple[float, int, int]] = deque()

    def sample(self, events: int, jobs: int) -> tuple[float, float] | None:
        """Record the counts now; the rates since the oldest sample kept, None
        on the first."""
        with self._lock:
            now = self._clock()
            self._samples.append((now, events, jobs))
            while len(self._samples) > 2 and now - self._samples[1][0] >= self._window:
                self._samples.popleft()
            then, events_then, jobs_then = self._samples[0]
        elapsed = now - then
        if elapsed <= 0:
            return None
        return (events - events_then) / elapsed, (jobs - jobs_then) / elapsed


def text(value: object) -> str:
    """A value as the page shows it: a string as it is, nothing for None, and
    anything else as JSON (a row written around the API may hold any value);
    cut at ``CELL_SHOWN`` characters."""
    if value is None:
        return ""
    shown = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    return shown if len(shown) <= CELL_SHOWN else shown[: CELL_SHOWN - 1] + "…"


class Panels:
    """What each panel shows, read from the catalog: a template's context."""

    def __init__(self, catalog: Catalog, rates: Rates) -> None:
        self._catalog = catalog
        self._rates = rates

    def readers(self) -> dict[str, Callable[[], dict[str, Any]]]:
        """By panel name, which is also its template's and its route's."""
        return {
            "counts": self.counts,
            "subscriptions": self.subscriptions,
            "events": self.events,
            "dead-letters": self.dead_letters,
            "filter-failures": self.filter_failures,
        }

    def counts(self) -> dict[str, Any]:
        stats = self._catalog.stats()
        events = sum(stats["event_types"].values())
        jobs = sum(counted["jobs_created"] for counted in stats["subscriptions"].values())
        return {"counts": {"events": events, "jobs": jobs, "rates": self._rates.sample(events, jobs)}}

    def subscriptions(self) -> dict[str, Any]:
        listed = self._subscriptions()
        return {
            "subscriptions": listed[:LISTED_SUBSCRIPTIONS],
            "more_subscriptions": len(listed) > LISTED_SUBSCRIPTIONS,
            "subscription_stats": self._catalog.stats()["subscriptions"],
        }

    def events(self) -> dict[str, Any]:
        return {"events": self._catalog.recent_events(limit=RECENT_EVENTS).items, "names": self._names()}

    def dead_letters(self) -> dict[str, Any]:
        page = self._catalog.dead_letters(limit=LISTED)
        return {"dead_letters": page.items, "more_dead_letters": page.next is not None}

    def filter_failures(self) -> dict[str, Any]:
        page = self._catalog.filter_failures(limit=LISTED)
        return {"failures": page.items, "more_failures": page.next is not None, "names": self._names()}

    def _subscriptions(self) -> list[dict[str, Any]]:
        return [subscription_document(subscription) for subscription in self._catalog.subscriptions()]

    def _names(self) -> dict[str, str]:
        """Subscription names by id, for the jobs and failures that name a subscription by id."""
        return {document["id"]: text(document.get("name")) for document in self._subscriptions()}


def add_page(app: FastAPI, catalog: Catalog) -> None:
    """``GET /``, its panels at ``/page/<panel>`` and its files at ``/static``."""
    templates = Environment(
        loader=PackageLoader(__name__),
        autoescape=True,
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    templates.filters["text"] = text
    readers = Panels(catalog, Rates()).readers()

    def render(template: str, context: dict[str, Any]) -> HTMLResponse:
        html = templates.get_template(template).render(context)
        return HTMLResponse(html, headers={"content-security-policy": SECURITY_POLICY})

    @app.get("/", include_in_schema=False)
    def page() -> HTMLResponse:
        """Every panel filled in already: the page shows the data before its script runs."""
        return render("page.html", {key: value for read in readers.values() for key, value in read().items()})

    @app.get("/page/{panel}", include_in_schema=False)
    def panel(panel: str) -> HTMLResponse:
        read = readers.get(panel)
        if read is None:
            raise ApiError(404, f"no panel {panel!r}; the panels: {', '.join(readers)}")
        return render(f"panels/{panel}.html", read())

    app.mount("/static", StaticFiles(packages=[(__name__, "static")]), name="static")
