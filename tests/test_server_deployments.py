"""The server's contract over both configurations, then the scaled configuration's faults.

Every contract test runs against SQLite + folder + in-process inference and against PostgreSQL + S3
(moto's server, over HTTP) + arq on Redis with `vitalcam serve --workers 2` and two worker processes
(tests/deployments.py). Both run the installed engine, so one tensor must give the same vitals in both,
the vitals this test process computes from it. Each request opens its own connection, so consecutive
requests land on either API process.

The fault tests need the scaled configuration only: an API process SIGKILLed (replaced), a worker
SIGKILLed while it holds a job, PostgreSQL crashing and restarting mid-run, S3 unreachable at
upload-complete, and a job outlasting the wait with PERSIST_VITALS=true (RESULT_PENDING). The client must
get the right answer or a typed, retryable error, and nothing may be lost.
"""

from __future__ import annotations

import contextlib
import os
import signal
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from contract.errors import ERROR_CODES
from contract.vitals import DEFAULT_FALLBACK_CONFIG
from server import start_embedded
from server.keys import create_key
from server.processing import default_infer, process_upload
from server.runner import EmbeddedServer
from server.stores.base import NewSession
from tests import fault_worker, services
from tests.deployments import JOB_TIMEOUT_S, QUOTA, RATE_LIMIT, Deployment, ScaledDeployment, deployment
from tests.tensors import make_payload

pytestmark = pytest.mark.timeout(300)  # the first test also starts the scaled deployment

PAYLOAD = make_payload(duration_s=20.0, hr_bpm=75.0, seed=3)
LIMIT_HEADERS = (
    "X-RateLimit-Limit",
    "X-RateLimit-Remaining",
    "X-RateLimit-Reset",
    "X-Usage-Current",
    "X-Usage-Limit",
    "X-Usage-Remaining",
)
_expected: dict[str, dict[str, float]] = {}


def expected_vitals(demographics: dict[str, Any] | None = None) -> dict[str, float]:
    """What the engine makes of PAYLOAD, computed here: both configurations must answer exactly this."""
    key = repr(sorted((demographics or {}).items()))
    if key not in _expected:
        outcome = process_upload("reference", PAYLOAD, demographics, DEFAULT_FALLBACK_CONFIG)
        assert outcome.measured, outcome.body  # a clean 75 bpm trace: a measurement, not a fallback
        _expected[key] = outcome.body["vitals"]
    return _expected[key]


@pytest.fixture(scope="module")
def scaled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScaledDeployment]:
    with deployment("scaled", tmp_path_factory.mktemp("scaled")) as built:
        assert isinstance(built, ScaledDeployment)
        yield built


@pytest.fixture(scope="module", params=["embedded", "scaled"])
def dep(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Deployment]:
    if request.param == "scaled":
        yield request.getfixturevalue("scaled")
        return
    with deployment(request.param, tmp_path_factory.mktemp(request.param)) as built:
        yield built


class Client:
    """The three calls of a session and the result poll, each on a fresh connection."""

    def __init__(self, dep: Deployment | EmbeddedServer, api_key: str | None = None) -> None:
        self.base_url = dep.base_url
        self.headers = {"X-API-Key": api_key or dep.api_key}

    def start(self, body: Any = None) -> httpx.Response:
        return httpx.post(f"{self.base_url}/sdk/session/start", json=body, headers=self.headers, timeout=60)

    def put(self, url: str, content: bytes = PAYLOAD) -> httpx.Response:
        return httpx.put(url, content=content, headers={"Content-Type": "video/webm"}, timeout=60)

    def complete(self, session_id: str, timeout_s: float = 60) -> httpx.Response:
        return httpx.post(
            f"{self.base_url}/sdk/session/upload-complete",
            json={"session_id": session_id},
            headers=self.headers,
            timeout=timeout_s,
        )

    def result(self, session_id: str) -> httpx.Response:
        return httpx.get(f"{self.base_url}/sdk/session/result/{session_id}", headers=self.headers, timeout=60)

    def uploaded(self, body: Any = None) -> dict[str, Any]:
        started = self.start(body)
        assert started.status_code == 200, started.text
        put = self.put(started.json()["upload_url"])
        assert put.status_code == 200, put.text
        return dict(started.json())


def assert_error(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    """The standard error body, with the contract's status and retryable flag for `code`."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message", "retryable"} and body["error"] == code, body
    assert body["retryable"] is ERROR_CODES[code].retryable and body["message"]
    return dict(body)


def wait_until(condition: Any, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return bool(condition())


# ---- the contract, over both configurations ------------------------------------------------------------


def test_a_session_answers_the_engines_vitals_and_leaves_nothing_behind(dep: Deployment) -> None:
    client = Client(dep)
    demographics = {"age": 61, "sex": "F"}
    started = client.start({"demographics": demographics})
    assert started.status_code == 200, started.text
    session = started.json()
    sid = session["session_id"]
    assert set(session) == {"session_id", "expires_at", "upload_url", "fallback_config"}
    assert uuid.UUID(sid).version == 4 and session["fallback_config"] == DEFAULT_FALLBACK_CONFIG
    assert abs(session["expires_at"] - (time.time() + 1800)) < 60
    assert all(name in started.headers for name in LIMIT_HEADERS)
    assert client.result(sid).json() == {"session_id": sid, "status": "created"}
    assert client.put(session["upload_url"]).status_code == 200
    # Through the API the server has seen the tensor; straight to the bucket it has not, yet.
    assert client.result(sid).json()["status"] == ("created" if dep.direct_uploads else "uploading")
    assert dep.blob_exists(sid)

    done = client.complete(sid)
    assert done.status_code == 200, done.text
    body = done.json()
    assert set(body) == {"session_id", "status", "vitals", "processing_time_ms", "quality"}
    assert body["status"] == "completed" and body["session_id"] == sid
    assert body["vitals"] == expected_vitals(demographics)
    assert list(body["vitals"]) == list(expected_vitals(demographics))  # the spec's order, too
    assert all(name in done.headers for name in LIMIT_HEADERS)
    # PERSIST_VITALS=false: nothing about the session survives the response, anywhere.
    assert dep.traces(sid) == []
    assert_error(client.complete(sid), 404, "SESSION_NOT_FOUND")
    assert_error(client.result(sid), 404, "SESSION_NOT_FOUND")


def test_the_sdk_client_measures_through_either_configuration_unchanged(
    dep: Deployment, tmp_path: Path
) -> None:
    """transport.SessionClient, as `vitalcam measure --api-url` uses it, with no idea which backend it is."""
    from transport import Demographics, Outbox, SessionClient

    with SessionClient(dep.base_url, dep.api_key) as client:
        result = client.measure(PAYLOAD, Demographics(age=47), outbox=Outbox(tmp_path / "outbox"))
    assert result.status == "completed" and not result.is_fallback
    assert result.vitals is not None
    expected = expected_vitals({"age": 47})
    assert (result.vitals.heart_rate, result.vitals.confidence) == (
        expected["heart_rate"],
        expected["confidence"],
    )
    assert dep.traces(result.session_id) == []
    assert not list((tmp_path / "outbox").glob("*"))  # nothing had to be kept for a retry


def test_every_key_failure_is_the_same_401(dep: Deployment) -> None:
    revoked = dep.new_key("revoked-dev")
    with dep.store() as store:
        authed = store.authenticate(revoked)
        assert authed is not None
        store.revoke_key(authed.key_id)
    session = Client(dep).start().json()
    bodies = []
    for key in (None, "", "not-a-key", "ck_test_" + "0" * 48, revoked):
        client = Client(dep)
        client.headers = {} if key is None else {"X-API-Key": key}
        for response in (
            client.start(),
            client.complete(session["session_id"]),
            client.result(session["session_id"]),
        ):
            bodies.append(assert_error(response, 401, "API_KEY_INVALID"))
            assert "X-RateLimit-Remaining" not in response.headers
    assert len({b["message"] for b in bodies}) == 1
    assert Client(dep).result(session["session_id"]).json()["status"] == "created"  # untouched


@pytest.mark.parametrize(
    ("payload", "message"),
    [(b"\x00" * 7, "payload: truncated"), (PAYLOAD[:-100], "truncated")],
    ids=["junk", "cut"],
)
def test_a_malformed_tensor_is_400_and_the_session_stays_usable(
    dep: Deployment, payload: bytes, message: str
) -> None:
    """Through the API the PUT itself is refused; straight to the bucket, upload-complete refuses it
    (docs/api.md) and deletes the object. Either way the same URL then takes a good tensor."""
    client = Client(dep)
    session = client.start().json()
    sid = session["session_id"]
    put = client.put(session["upload_url"], payload)
    if dep.direct_uploads:
        assert put.status_code == 200
        error = assert_error(client.complete(sid), 400, "INVALID_REQUEST")
        assert message in error["message"], error["message"]
        assert not dep.blob_exists(sid)
    else:
        assert message in assert_error(put, 400, "INVALID_REQUEST")["message"]
        assert_error(client.complete(sid), 400, "INVALID_REQUEST")  # nothing uploaded
    assert client.result(sid).json()["status"] == "created"
    assert client.put(session["upload_url"]).status_code == 200
    done = client.complete(sid)
    assert done.status_code == 200, done.text
    assert done.json()["vitals"] == expected_vitals()


def test_upload_complete_without_an_upload_and_for_an_unknown_session(dep: Deployment) -> None:
    client = Client(dep)
    assert_error(client.complete(str(uuid.uuid4())), 404, "SESSION_NOT_FOUND")
    session = client.start().json()
    error = assert_error(client.complete(session["session_id"]), 400, "INVALID_REQUEST")
    assert "upload" in error["message"].lower()
    assert client.result(session["session_id"]).json()["status"] == "created"
    other = Client(dep, dep.new_key("someone-else"))
    assert_error(other.complete(session["session_id"]), 403, "FORBIDDEN")


def test_an_expired_session_is_410_reads_expired_and_its_tensor_is_swept(dep: Deployment) -> None:
    client = Client(dep)
    session = client.uploaded()
    sid = session["session_id"]
    assert dep.blob_exists(sid)
    dep.backdate(sid, 5)
    assert_error(client.complete(sid), 410, "SESSION_EXPIRED")
    assert client.result(sid).json() == {"session_id": sid, "status": "expired"}
    assert wait_until(lambda: not dep.blob_exists(sid)), "the sweeper left the tensor"
    with dep.store() as store:
        row = store.get_session(sid)
    assert row is not None and row.status.value == "expired" and row.demographics is None


def test_rate_limit_and_quota_headers_count_exactly_and_stop_at_the_limit(dep: Deployment) -> None:
    key = dep.new_key(f"limits-{uuid.uuid4().hex[:8]}")
    client = Client(dep, key)
    first = client.start()
    assert first.status_code == 200
    h = first.headers
    assert (h["X-RateLimit-Limit"], h["X-RateLimit-Remaining"]) == (str(RATE_LIMIT), str(RATE_LIMIT - 1))
    assert (h["X-Usage-Current"], h["X-Usage-Limit"], h["X-Usage-Remaining"]) == (
        "1",
        str(QUOTA),
        str(QUOTA - 1),
    )
    assert 0 < int(h["X-RateLimit-Reset"]) - time.time() <= 3600
    # Each request is counted once, whichever API process answers it.
    for n in range(2, 6):
        polled = client.result(first.json()["session_id"])
        assert polled.headers["X-RateLimit-Remaining"] == str(RATE_LIMIT - n)
        assert polled.headers["X-Usage-Current"] == "1"  # only starts consume scans

    # Fill the quota to one short of the limit through the store, then the API takes the last scan.
    with dep.store() as store:
        authed = store.authenticate(key)
        assert authed is not None
        for _ in range(QUOTA - 2):
            new = NewSession(str(uuid.uuid4()), authed, time.time(), 1800, None, DEFAULT_FALLBACK_CONFIG)
            assert store.start_session(new, QUOTA)[1] is not None
    last = client.start()
    assert last.status_code == 200 and last.headers["X-Usage-Remaining"] == "0"
    refused = client.start()
    assert_error(refused, 429, "QUOTA_EXCEEDED")
    assert refused.headers["X-Usage-Current"] == str(QUOTA) and "Retry-After" not in refused.headers
    # Sessions already started still finish.
    assert client.put(last.json()["upload_url"]).status_code == 200
    assert client.complete(last.json()["session_id"]).status_code == 200

    # The hourly limit: spend it down to the last request, which is allowed; the next is 429, retryable.
    with dep.store() as store:
        used = RATE_LIMIT - int(client.result(first.json()["session_id"]).headers["X-RateLimit-Remaining"])
        for _ in range(RATE_LIMIT - used - 1):
            assert store.count_request(authed.key_id, time.time(), RATE_LIMIT).allowed
    allowed = client.result(first.json()["session_id"])
    assert allowed.status_code == 200 and allowed.headers["X-RateLimit-Remaining"] == "0"
    limited = client.result(first.json()["session_id"])
    assert_error(limited, 429, "RATE_LIMIT_EXCEEDED")
    assert 1 <= int(limited.headers["Retry-After"]) <= 3600
    assert limited.headers["X-RateLimit-Remaining"] == "0"


def test_concurrent_sessions_all_get_their_own_answer(dep: Deployment) -> None:
    key = dep.new_key(f"concurrent-{uuid.uuid4().hex[:8]}")
    ages = [20 + i for i in range(8)]

    def one(age: int) -> tuple[int, dict[str, Any]]:
        client = Client(dep, key)
        session = client.uploaded({"demographics": {"age": age}})
        done = client.complete(session["session_id"])
        assert done.status_code == 200, done.text
        return age, done.json()

    with ThreadPoolExecutor(len(ages)) as pool:
        answers = list(pool.map(one, ages))
    assert len({body["session_id"] for _, body in answers}) == len(ages)
    for age, body in answers:
        assert body["vitals"] == expected_vitals({"age": age})


# ---- the scaled configuration: processes and faults ----------------------------------------------------


def test_two_api_processes_serve_one_port_and_a_dead_one_is_replaced(scaled: ScaledDeployment) -> None:
    before = scaled.api_processes()
    assert len(before) == 2
    assert len([w for w in scaled.workers if w.poll() is None]) == 2
    os.kill(before[0], signal.SIGKILL)
    client = Client(scaled)
    for _ in range(5):  # the survivor answers meanwhile (a connection may still reach the dead one)
        with contextlib.suppress(httpx.TransportError):
            assert client.start().status_code == 200
    assert wait_until(
        lambda: len(scaled.api_processes()) == 2 and before[0] not in scaled.api_processes(), 120
    )
    assert before[1] in scaled.api_processes()
    session = client.uploaded()
    assert client.complete(session["session_id"]).json()["vitals"] == expected_vitals()


def test_keys_cli_manages_the_keys_of_the_postgresql_deployment(
    scaled: ScaledDeployment, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from vitalcam.cli import main

    url = scaled.pg.url
    assert main(["keys", "create", "--developer", "cli-dev", "--database-url", url]) == 0
    key = capsys.readouterr().out.strip()
    assert Client(scaled, key).start().status_code == 200  # the API processes accept it at once
    monkeypatch.setenv("VITALCAM_DATABASE_URL", url)  # the same database, from the environment
    assert main(["keys", "list"]) == 0
    [line] = [line for line in capsys.readouterr().out.splitlines() if "cli-dev" in line]
    key_id = line.split()[0]
    assert key.startswith(key_id) and "active" in line and key not in line
    assert main(["keys", "revoke", key_id]) == 0
    assert_error(Client(scaled, key).start(), 401, "API_KEY_INVALID")


def test_a_worker_killed_while_it_holds_the_job_loses_nothing(scaled: ScaledDeployment) -> None:
    """SIGKILL the worker running the job: the other worker takes it once the dead one's claim expires
    (job timeout + 10 s) and the waiting upload-complete answers the engine's vitals."""
    client = Client(scaled)
    session = client.uploaded({"demographics": {"age": 44}})
    sid = session["session_id"]
    calls_before = len(fault_worker.calls(scaled.control))
    (scaled.control / fault_worker.HOLD_NEXT).touch()
    answer: list[httpx.Response] = []
    waiting = threading.Thread(target=lambda: answer.append(client.complete(sid, timeout_s=120)))
    waiting.start()
    try:
        assert wait_until(lambda: fault_worker.held_by(scaled.control), 30), "no worker took the job"
        [holder] = fault_worker.held_by(scaled.control)
        scaled.kill_worker(holder)
        (scaled.control / f"held-by-{holder}").unlink()
        scaled.start_worker()  # the supervisor's replacement; the surviving worker may well win the job
    finally:
        waiting.join(JOB_TIMEOUT_S + 60)
    assert answer, "upload-complete never answered"
    done = answer[0]
    assert done.status_code == 200, done.text
    assert done.json()["vitals"] == expected_vitals({"age": 44})
    assert "fallback" not in done.json()["quality"]
    runs = fault_worker.calls(scaled.control)[calls_before:]
    assert len(runs) == 2 and runs[0] == holder and runs[1] != holder  # the first try and one retry
    assert scaled.traces(sid) == []  # nothing of it left in PostgreSQL, the bucket or Redis


def test_with_persist_vitals_a_slow_job_is_result_pending_and_any_api_process_answers_it_later(
    scaled: ScaledDeployment,
) -> None:
    """A third API process (PERSIST_VITALS=true, a 1 s wait) on the same database, bucket and queue: a
    job still running after the wait is 503 RESULT_PENDING, the session polls as processing from the
    other API processes, and once the job is done every process answers the same stored result."""
    with start_embedded(
        data_dir=scaled.root / "persist",
        persist_vitals=True,
        result_wait_s=1.0,
        database_url=scaled.config.database_url,
        blob_store=scaled.config.blob_store,
        queue_url=scaled.config.queue_url,
    ) as persisting:
        client = Client(scaled, persisting.api_key)
        client.base_url = persisting.base_url
        session = client.uploaded({"demographics": {"age": 52}})
        sid = session["session_id"]
        (scaled.control / fault_worker.HOLD_NEXT).touch()
        pending = client.complete(sid)
        assert_error(pending, 503, "RESULT_PENDING")
        assert pending.headers["Retry-After"] == "2"
        assert fault_worker.held_by(scaled.control), "the job was not running"
        elsewhere = Client(scaled, persisting.api_key)  # the `serve --workers 2` processes
        assert elsewhere.result(sid).json() == {"session_id": sid, "status": "processing"}
        (scaled.control / fault_worker.RELEASE).touch()
        for _ in range(30):  # what a client does with a retryable answer: repeat it
            done = client.complete(sid)  # waits again; soon the job has finished
            if done.status_code != 503:
                break
            assert_error(done, 503, "RESULT_PENDING")
        assert done.status_code == 200, done.text
        assert done.json()["vitals"] == expected_vitals({"age": 52})
        polled = elsewhere.result(sid).json()
        assert polled["status"] == "completed" and polled["vitals"] == done.json()["vitals"]
        assert client.complete(sid).json() == done.json()  # repeated: the same body
        assert not scaled.blob_exists(sid)  # the tensor goes once inference is done


def test_postgres_restarting_mid_run_gives_answers_or_retryable_errors_then_service_resumes(
    scaled: ScaledDeployment,
) -> None:
    """Clients run sessions while PostgreSQL crashes and, over 10 s later, starts again. Every response is
    a correct answer or a typed error the contract calls retryable; retrying those finishes every session
    with the engine's vitals (an upload-complete already waiting, and the workers, wait the outage out
    instead of dropping the job)."""
    key = scaled.new_key(f"pg-restart-{uuid.uuid4().hex[:8]}")
    seen: list[str] = []
    lock = threading.Lock()

    def call(request: Any) -> httpx.Response:
        for _ in range(60):
            try:
                response = request()
            except httpx.TransportError as exc:  # a connection the API dropped: transport retries those
                with lock:
                    seen.append(type(exc).__name__)
                time.sleep(0.5)
                continue
            if response.status_code < 400:
                return response
            body = response.json()
            with lock:
                seen.append(body["error"])
            assert body["retryable"] is True and ERROR_CODES[body["error"]].retryable, response.text
            time.sleep(0.5)
        raise AssertionError(f"still failing a minute after the restart: {seen}")

    def one(i: int) -> tuple[int, dict[str, Any]]:
        age = 30 + i % 50
        client = Client(scaled, key)
        session = call(lambda: client.start({"demographics": {"age": age}})).json()
        call(lambda: client.put(session["upload_url"]))
        return age, dict(call(lambda: client.complete(session["session_id"])).json())

    stop = threading.Event()
    results: list[tuple[int, dict[str, Any]]] = []
    failures: list[BaseException] = []

    def clients() -> None:
        try:
            with ThreadPoolExecutor(3) as pool:
                i = 0
                while not stop.is_set():
                    results.extend(pool.map(one, range(i, i + 3)))
                    i += 3
        except BaseException as exc:  # raised again below: a thread's failure must fail the test
            failures.append(exc)

    runner = threading.Thread(target=clients)
    runner.start()
    try:
        time.sleep(1.0)
        scaled.pg.stop("immediate")  # as if it crashed: every connection drops
        # A request while it is down waits 10 s for a connection, then is the typed, retryable 503.
        assert_error(Client(scaled, key).start(), 503, "SERVICE_UNAVAILABLE")
        scaled.pg.start()
        time.sleep(2.0)
    finally:
        stop.set()
        runner.join(150)
    assert not runner.is_alive()
    if failures:
        raise failures[0]
    assert results, "no session finished"
    for age, body in results:
        assert body["status"] == "completed" and body["vitals"] == expected_vitals({"age": age}), body
    # After the restart: a plain session, no retries needed.
    client = Client(scaled, key)
    session = client.uploaded({"demographics": {"age": 33}})
    done = client.complete(session["session_id"])
    assert done.status_code == 200 and done.json()["vitals"] == expected_vitals({"age": 33})


def crash_postgres_under(
    pg: services.Postgres,
    call: Callable[[], httpx.Response],
    holding: Callable[[], None],
    go_on: threading.Event,
) -> None:
    """Run `call` in a thread; once `holding()` returns (the request is where the crash must hit it),
    crash PostgreSQL, let the request go on, and require its answer to be the retryable 503. Then
    start PostgreSQL again."""
    answers: list[httpx.Response] = []
    thread = threading.Thread(target=lambda: answers.append(call()))
    thread.start()
    holding()
    pg.stop("immediate")
    go_on.set()
    thread.join(60)
    assert answers, "the interrupted request got no answer"
    assert_error(answers[0], 503, "SERVICE_UNAVAILABLE")
    pg.start()


def until_ok(call: Callable[[], httpx.Response]) -> httpx.Response:
    """Repeat `call` (retryable errors only) until it succeeds, for at most half a minute."""
    seen: list[str] = []
    for _ in range(60):
        response = call()
        if response.status_code == 200:
            return response
        seen.append(response.json()["error"])
        assert response.json()["retryable"] is True, response.text
        time.sleep(0.5)
    raise AssertionError(f"still refused half a minute after PostgreSQL came back: {seen}")


def test_postgres_crashing_mid_put_costs_a_retry_not_the_session(tmp_path: Path) -> None:
    """PUTs through the API on PostgreSQL: the session store crashes while a body streams in, after the PUT
    claimed the session. That PUT is a retryable 503; once PostgreSQL is back the claim is released, so
    a repeated PUT gets through (409 meanwhile at most) and upload-complete answers. The claim used to
    stay, and every later PUT was 409 until the session expired."""
    with services.postgres() as pg, start_embedded(data_dir=tmp_path, database_url=pg.url) as srv:
        client = Client(srv)
        started = client.start().json()
        sid, url = started["session_id"], started["upload_url"]
        go_on = threading.Event()

        def body() -> Iterator[bytes]:
            yield PAYLOAD[: len(PAYLOAD) // 2]
            go_on.wait(30)
            yield PAYLOAD[len(PAYLOAD) // 2 :]

        def claimed() -> None:
            deadline_s = time.time() + 30
            while client.result(sid).json()["status"] != "uploading":
                assert time.time() < deadline_s, "the PUT never claimed the session"
                time.sleep(0.05)

        crash_postgres_under(pg, lambda: httpx.put(url, content=body(), timeout=60), claimed, go_on)
        until_ok(lambda: client.put(url))
        done = client.complete(sid)
        assert done.status_code == 200 and done.json()["vitals"] == expected_vitals(), done.text


def test_postgres_crashing_during_inference_keeps_the_vitals_for_the_retry(tmp_path: Path) -> None:
    """In-process inference on PostgreSQL: the database crashes while the engine runs, so the session
    cannot be settled. upload-complete is a retryable 503, and once PostgreSQL is back the repeated call
    gets the vitals computed before the crash; with PERSIST_VITALS=false the row then goes. The outcome
    used to be lost, and every retry was a 409 until the session expired."""
    started, go_on = threading.Event(), threading.Event()

    def gated(measurement: Any, demographics: Any) -> Any:
        started.set()
        go_on.wait(30)
        return default_infer(measurement, demographics)

    with (
        services.postgres() as pg,
        start_embedded(data_dir=tmp_path, database_url=pg.url, infer=gated) as srv,
    ):
        client = Client(srv)
        sid = client.uploaded()["session_id"]
        crash_postgres_under(pg, lambda: client.complete(sid), lambda: assert_set(started), go_on)
        assert until_ok(lambda: client.complete(sid)).json()["vitals"] == expected_vitals()
        assert pg.psql(f"SELECT count(*) FROM sessions WHERE id = '{sid}'").strip() == "0"
        assert client.result(sid).status_code == 404


@contextlib.contextmanager
def behind_ack_losing_proxy(
    tmp_path: Path,
) -> Iterator[tuple[services.Postgres, services.AckLosingProxy, EmbeddedServer]]:
    """The embedded server on a real PostgreSQL, reached through `services.AckLosingProxy`."""
    with (
        services.postgres() as pg,
        services.AckLosingProxy(pg) as proxy,
        start_embedded(data_dir=tmp_path, database_url=proxy.url) as srv,
    ):
        yield pg, proxy, srv


def answer_lost(
    proxy: services.AckLosingProxy, sid: str, call: Callable[[], httpx.Response], skip: int = 0
) -> None:
    """Run `call` with the answer to its row change of session `sid` after `skip` of them lost (the
    change itself committed): it must be the retryable 503."""
    lost = proxy.lose_ack(sid, skip=skip)
    assert_error(call(), 503, "SERVICE_UNAVAILABLE")
    assert lost.is_set(), "no acknowledgement was lost: the fault did not happen"


@pytest.mark.parametrize("skip", [0, 1], ids=["claim", "upload-record"])
def test_a_lost_acknowledgement_during_a_put_costs_a_retry_not_the_session(tmp_path: Path, skip: int) -> None:
    """PostgreSQL commits the PUT's claim (created -> uploading), or its record of the stored upload, but
    the answer is lost. The server cannot tell what it holds, so the PUT is a retryable 503 and the
    claim, if it stands, goes under its token with the blob and the record; the repeated PUT gets
    through. A lost claim used to stay with nobody holding it: every later PUT was a 409 until the
    session expired."""
    with behind_ack_losing_proxy(tmp_path) as (_, proxy, srv):
        client = Client(srv)
        started = client.start().json()
        sid, url = started["session_id"], started["upload_url"]
        answer_lost(proxy, sid, lambda: client.put(url), skip)
        until_ok(lambda: client.put(url))
        done = client.complete(sid)
        assert done.status_code == 200 and done.json()["vitals"] == expected_vitals(), done.text


def test_a_lost_acknowledgement_of_the_processing_claim_costs_a_retry(tmp_path: Path) -> None:
    """The same for upload-complete's claim (uploading -> processing): a retryable 503, then the repeat
    runs inference. The session used to stay `processing` with no process running it (409s)."""
    with behind_ack_losing_proxy(tmp_path) as (pg, proxy, srv):
        client = Client(srv)
        sid = client.uploaded()["session_id"]
        answer_lost(proxy, sid, lambda: client.complete(sid))
        assert until_ok(lambda: client.complete(sid)).json()["vitals"] == expected_vitals()
        assert pg.psql(f"SELECT count(*) FROM sessions WHERE id = '{sid}'").strip() == "0"


def test_a_lost_acknowledgement_of_the_privacy_delete_still_delivers_the_vitals(tmp_path: Path) -> None:
    """PERSIST_VITALS=false: after inference the row is deleted, the delete commits and its answer is
    lost. upload-complete is a 503; the repeat gets the vitals computed before (kept in memory only),
    although the row they belonged to is already gone. It used to get 404 SESSION_NOT_FOUND."""
    with behind_ack_losing_proxy(tmp_path) as (pg, proxy, srv):
        client = Client(srv)
        sid = client.uploaded()["session_id"]
        answer_lost(proxy, sid, lambda: client.complete(sid), skip=1)  # the processing claim passes
        assert pg.psql(f"SELECT count(*) FROM sessions WHERE id = '{sid}'").strip() == "0"
        stranger = Client(srv, create_key(tmp_path, "stranger", database_url=pg.url))
        assert_error(stranger.complete(sid), 404, "SESSION_NOT_FOUND")  # kept for its developer only
        assert until_ok(lambda: client.complete(sid)).json()["vitals"] == expected_vitals()
        assert client.complete(sid).status_code == 404  # delivered once, then nothing is left


def assert_set(event: threading.Event) -> None:
    assert event.wait(30), "inference never started"


def test_s3_unavailable_at_upload_complete_is_a_retryable_503_and_nothing_is_lost(
    scaled: ScaledDeployment,
) -> None:
    client = Client(scaled)
    session = client.uploaded()
    sid = session["session_id"]
    scaled.s3.stop()
    try:
        down = client.complete(sid)
    finally:
        scaled.s3.start()
    assert_error(down, 503, "SERVICE_UNAVAILABLE")
    assert client.result(sid).json()["status"] == "created"  # left as it was
    # moto keeps everything in memory, so its restart lost the bucket and the upload (a real S3 keeps
    # both): recreate the bucket, PUT again, and the retried upload-complete succeeds.
    import boto3

    s3 = boto3.client("s3", endpoint_url=scaled.s3.endpoint, region_name="us-east-1")
    s3.create_bucket(Bucket=scaled.BUCKET)
    assert client.put(session["upload_url"]).status_code == 200
    done = client.complete(sid)
    assert done.status_code == 200 and done.json()["vitals"] == expected_vitals()
    assert scaled.traces(sid) == []
