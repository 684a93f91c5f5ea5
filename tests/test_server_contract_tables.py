"""The contract's session and error tables: what the server and the client both build on."""

from __future__ import annotations

import pytest

from contract import errors, sessions
from contract.sessions import SessionStatus as S


def test_every_status_has_a_row_and_expired_is_the_end() -> None:
    assert set(sessions.TRANSITIONS) == set(S)
    assert sessions.TRANSITIONS[S.EXPIRED] == frozenset()
    assert {s.value for s in S} == {"created", "uploading", "processing", "completed", "failed", "expired"}


@pytest.mark.parametrize(
    ("source", "target", "allowed"),
    [
        ("created", "uploading", True),
        ("uploading", "created", True),
        ("uploading", "processing", True),
        ("processing", "uploading", True),
        ("processing", "completed", True),
        ("completed", "processing", False),
        ("created", "processing", False),
        ("expired", "created", False),
        ("failed", "completed", False),
        ("created", "nonsense", False),
    ],
)
def test_transitions(source: str, target: str, allowed: bool) -> None:
    assert sessions.can_transition(source, target) is allowed


def test_check_transition_names_both_ends() -> None:
    sessions.check_transition("created", "uploading")
    with pytest.raises(sessions.IllegalTransition, match="'completed' to 'processing'"):
        sessions.check_transition(S.COMPLETED, S.PROCESSING)


def test_error_table_keeps_the_spec_and_design_rules() -> None:
    table = errors.ERROR_CODES
    assert set(table) >= errors.SPEC_CODES
    assert (table["RATE_LIMIT_EXCEEDED"].http_status, table["RATE_LIMIT_EXCEEDED"].retryable) == (429, True)
    assert (table["QUOTA_EXCEEDED"].http_status, table["QUOTA_EXCEEDED"].retryable) == (429, False)
    assert all(code.code == name for name, code in table.items())
    assert all(code.retryable for code in table.values() if code.http_status == 503)
    assert errors.is_retryable("SOMETHING_NEW", 502) and not errors.is_retryable("SOMETHING_NEW", 400)
