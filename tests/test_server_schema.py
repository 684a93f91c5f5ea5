"""Property-based run of schemathesis against the OpenAPI document the live server serves.

Valid and invalid requests are generated from the served schema and sent over HTTP with a real key; no
response may be a 5xx, and every response must match what the document says (status codes, bodies,
content types). Bounded (a few dozen examples per operation) to stay well under a minute.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode, checks

from server import start_embedded
from server.inference import InferenceResult

pytestmark = pytest.mark.timeout(120)

API_KEY: dict[str, str] = {}


def trivial_infer(measurement: Any, demographics: Any) -> InferenceResult:
    vitals = {
        "heart_rate": 70.0,
        "respiratory_rate": 15.0,
        "hrv": 40.0,
        "spo2": 98.0,
        "systolic_bp": 120.0,
        "diastolic_bp": 80.0,
        "confidence": 0.5,
    }
    return InferenceResult.from_vitals(vitals, {"source": {}})


@pytest.fixture(scope="module")
def live_server() -> Iterator[Any]:
    with start_embedded(infer=trivial_infer, rate_limit_per_hour=100_000, monthly_quota=100_000) as srv:
        API_KEY["X-API-Key"] = srv.api_key
        yield srv


@pytest.fixture(scope="module")
def served_schema(live_server: Any) -> Any:
    return schemathesis.openapi.from_url(f"{live_server.base_url}/openapi.json")


CHECKS = [
    checks.not_a_server_error,
    checks.status_code_conformance,
    checks.content_type_conformance,
    checks.response_schema_conformance,
    checks.response_headers_conformance,
]


# schemathesis' own pytest integration (`schemathesis.pytest.from_fixture`) fails under pytest 9
# ("'Function' object has no attribute '_nodeid'"), so each operation's strategy is driven by hypothesis
# directly; the generated requests and the checks are the same.
@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE], ids=str)
def test_no_server_errors_and_responses_match_the_document(served_schema: Any, mode: GenerationMode) -> None:
    operations = [result.ok() for result in served_schema.get_all_operations()]
    assert len(operations) == 5
    statuses: Counter[tuple[str, int]] = Counter()
    for operation in operations:

        @given(case=operation.as_strategy(generation_mode=mode))
        @settings(
            max_examples=25,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: Any) -> None:
            response = case.call_and_validate(headers=dict(API_KEY), checks=CHECKS)
            statuses[(case.operation.label, response.status_code)] += 1

        try:
            run()
        except Unsatisfiable:  # nothing to make invalid (GET /health has no parameters)
            assert mode is GenerationMode.NEGATIVE and not operation.path_parameters
    assert sum(statuses.values()) >= 50, statuses
    if mode is GenerationMode.POSITIVE:
        assert statuses[("POST /sdk/session/start", 200)] > 0, statuses
        assert statuses[("POST /sdk/session/start", 400)] == 0, statuses  # valid input is accepted
    else:
        assert statuses[("POST /sdk/session/start", 400)] > 0, statuses
