"""The outbox loses nothing: failed workflows are saved, replayed with fresh sessions, and a crash at any
step leaves either the pending item or its saved result. Runs against the reference server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fault_proxy import Backend, FaultProxy, backend
from tests.tensors import make_payload
from transport import (
    Demographics,
    InvalidRequest,
    NetworkError,
    Outbox,
    Result,
    RetryPolicy,
    ServerError,
    SessionClient,
    VitalcamError,
    default_outbox_dir,
    retry_outbox,
)

FAST = RetryPolicy(attempts=2, initial_s=0.01, max_s=0.02, total_s=5, jitter_s=0.0)
UNAVAILABLE = ("respond", 503, {"error": "UNAVAILABLE", "message": "down", "retryable": True}, {})
START = "/sdk/session/start"


class Crash(BaseException):
    """Stands in for the process dying (not an Exception, so nothing may swallow it)."""


@pytest.fixture(scope="module")
def server() -> Iterator[Backend]:
    with backend() as b:
        yield b


@pytest.fixture(scope="module")
def payload() -> bytes:
    return make_payload(duration_s=8.0, seed=3)


@pytest.fixture
def client(proxy: FaultProxy, server: Backend) -> Iterator[SessionClient]:
    with SessionClient(proxy.url, server.api_key, retry=FAST, timeout_s=5, poll_interval_s=0.05) as c:
        yield c


def test_failed_measure_is_saved_and_replayed(
    client: SessionClient, proxy: FaultProxy, payload: bytes, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path / "outbox")
    demographics = Demographics(age=50, sex="F", fitzpatrick=4)
    proxy.plan("POST", "/sdk/session/upload-complete", UNAVAILABLE, UNAVAILABLE)
    with pytest.raises(ServerError) as info:
        client.measure(payload, demographics, outbox=outbox)
    assert info.value.outbox_path is not None and info.value.outbox_path.read_bytes() == payload
    assert str(info.value.outbox_path) in str(info.value)

    [item] = outbox.pending()
    sidecar = json.loads(item.sidecar_path.read_text())
    assert sidecar["api_url"] == client.base_url
    assert sidecar["demographics"] == {"age": 50, "sex": "F", "fitzpatrick": 4}
    assert sidecar["last_error"]["code"] == "UNAVAILABLE" and sidecar["created_at"] > 0
    assert (
        "api_key" not in item.sidecar_path.read_text() and client.api_key not in item.sidecar_path.read_text()
    )

    proxy.reset()
    [(replayed, outcome)] = retry_outbox(client, outbox)
    assert replayed.id == item.id and isinstance(outcome, Result) and outcome.status == "completed"
    assert outbox.pending() == []
    saved = json.loads(outbox.result_path(item).read_text())
    assert saved["result"]["session_id"] == outcome.session_id
    assert proxy.count("POST", START) == 1  # a fresh session for the replay


def test_network_down_saves_and_a_failed_replay_keeps_the_item(
    proxy: FaultProxy, server: Backend, payload: bytes, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path)
    with SessionClient("http://127.0.0.1:9", server.api_key, retry=FAST, timeout_s=1) as offline:
        with pytest.raises(NetworkError):
            offline.measure(payload, outbox=outbox)
        [(item, outcome)] = retry_outbox(offline, outbox)
    assert isinstance(outcome, NetworkError)
    [still] = outbox.pending()
    assert still.id == item.id and still.attempts == 2 and still.last_error is not None
    assert still.last_error["code"] == "NETWORK_ERROR"


def test_rejected_payload_is_not_kept(client: SessionClient, payload: bytes, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    with pytest.raises(InvalidRequest) as info:
        client.measure(payload[:-64], outbox=outbox)
    assert info.value.outbox_path is None and outbox.pending() == []


def test_crash_after_result_saved_before_delete_does_not_resubmit(
    client: SessionClient, proxy: FaultProxy, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path)
    item = outbox.save(payload, api_url=client.base_url)

    def crash(*_: object) -> None:
        raise Crash

    with monkeypatch.context() as m:
        m.setattr(Outbox, "remove", crash)
        with pytest.raises(Crash):
            retry_outbox(client, outbox)
    # Both exist now: the pending item and its result. Nothing lost.
    assert [i.id for i in outbox.pending()] == [item.id] and outbox.result_path(item).exists()

    proxy.reset()
    [(_, outcome)] = retry_outbox(client, outbox)
    assert isinstance(outcome, Result) and outbox.pending() == []
    assert proxy.count("POST", START) == 0  # finished from the saved result, not measured twice


def test_crash_after_result_received_before_saved_keeps_the_item(
    client: SessionClient, payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path)
    item = outbox.save(payload)

    def crash(*_: object) -> None:
        raise Crash

    with monkeypatch.context() as m:
        m.setattr("transport.outbox._atomic_write", crash)
        with pytest.raises(Crash):
            retry_outbox(client, outbox)
    assert [i.id for i in outbox.pending()] == [item.id] and not outbox.result_path(item).exists()
    [(_, outcome)] = retry_outbox(client, outbox)
    assert isinstance(outcome, Result) and outbox.pending() == []


def test_crash_while_saving_leaves_no_half_files(
    payload: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = Outbox(tmp_path)
    real_replace = Path.replace
    calls = {"n": 0}

    def crash_on_sidecar(self: Path, target: Path) -> Path:
        calls["n"] += 1
        if calls["n"] == 2:  # payload moved into place, crash before the sidecar is
            raise Crash
        return real_replace(self, target)

    with monkeypatch.context() as m:
        m.setattr(Path, "replace", crash_on_sidecar)
        with pytest.raises(Crash):
            outbox.save(payload, api_url="http://x")
    # The payload survived without its sidecar and is still pending; no temp file is left behind.
    [item] = outbox.pending()
    assert item.payload_path.read_bytes() == payload and item.api_url is None
    assert not any(p.name.endswith(".tmp") for p in tmp_path.iterdir())


def test_corrupt_sidecar_still_lists_the_payload(payload: bytes, tmp_path: Path) -> None:
    outbox = Outbox(tmp_path)
    item = outbox.save(payload, demographics=Demographics(age=30))
    item.sidecar_path.write_text("{ not json")
    [again] = outbox.pending()
    assert again.id == item.id and again.demographics is None


def test_default_outbox_dir_follows_xdg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    assert default_outbox_dir() == tmp_path / "vitalcam" / "outbox"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert default_outbox_dir() == Path.home() / ".cache" / "vitalcam" / "outbox"
    assert Outbox().directory == default_outbox_dir()


def test_replay_continues_past_a_failing_item(
    client: SessionClient, proxy: FaultProxy, payload: bytes, tmp_path: Path
) -> None:
    outbox = Outbox(tmp_path)
    first = outbox.save(payload)
    second = outbox.save(payload)
    proxy.plan("POST", START, UNAVAILABLE, UNAVAILABLE)  # the first item's attempts both fail
    outcomes = {item.id: outcome for item, outcome in retry_outbox(client, outbox)}
    assert isinstance(outcomes[first.id], VitalcamError) and isinstance(outcomes[second.id], Result)
    assert [i.id for i in outbox.pending()] == [first.id]
