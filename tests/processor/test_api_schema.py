"""The API holds to its own OpenAPI document: schemathesis generates requests
from ``/openapi.json`` and sends them over real HTTP to a running API; no
answer may be a server error, and every answer must be one the document
describes (its status, content type, body and headers).

Bounded and reproducible: a fixed number of examples per operation, drawn
from a fixed seed (``derandomize``), so that a run is the same on every
machine and a failure is one that the code, not the draw, has."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.core.result import Ok

from processor.stores.sqlite import Catalog, SqliteRepairs, SqliteStore
from tests.processor.harness import serving

EXAMPLES = 100  # per operation


@pytest.fixture(scope="module")
def api_schema(tmp_path_factory: pytest.TempPathFactory) -> Iterator[schemathesis.BaseSchema]:
    db: Path = tmp_path_factory.mktemp("schema") / "api.db"
    SqliteStore(db).close()
    catalog = Catalog(db)
    with closing(SqliteRepairs(db)) as repairs, serving(catalog, repairs) as http:
        yield schemathesis.openapi.from_url(str(http.base_url.join("/openapi.json")))
    catalog.close()


def test_every_answer_is_one_the_document_describes_and_none_is_a_server_error(
    api_schema: schemathesis.BaseSchema,
) -> None:
    # Each operation in turn, with hypothesis driven here: schemathesis's pytest
    # plugin does not run under pytest 9.
    operations = []
    for result in api_schema.get_all_operations():
        assert isinstance(result, Ok), result  # the document itself is valid
        operations.append(result.ok())
    assert len(operations) >= 10, [operation.label for operation in operations]
    for operation in operations:

        @given(operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def holds(case: schemathesis.Case[Any]) -> None:
            case.call_and_validate()

        try:
            holds()
        except Exception as error:
            raise AssertionError(f"{operation.label}: {error}") from error
