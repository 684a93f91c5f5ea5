"""The scaled configuration end to end: PostgreSQL + S3 (moto's server) + arq workers on Redis.

Real servers on ephemeral ports; the API is the real app on a real socket with `queue_url` set, and the
inference runs in a separate `vitalcam worker` process. The client PUTs straight to the bucket.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from server import start_embedded
from tests import services
from tests.tensors import make_payload

pytestmark = pytest.mark.timeout(180)
PAYLOAD = make_payload(duration_s=20.0, hr_bpm=75.0, seed=3)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    os.environ.setdefault("AWS_ACCESS_KEY_ID", "test")
    os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "test")
    root = tmp_path_factory.mktemp("scaled")
    with services.postgres() as pg, services.redis(root / "redis") as redis, services.s3_server() as s3:
        blob_store = s3.blob_store_url("vitalcam-scaled")
        env = {**os.environ, "VITALCAM_DATABASE_URL": pg.url, "VITALCAM_BLOB_STORE": blob_store,
               "VITALCAM_QUEUE_URL": redis.url, "VITALCAM_DATA_DIR": str(root / "data")}  # fmt: skip
        with start_embedded(
            data_dir=root / "data", database_url=pg.url, blob_store=blob_store, queue_url=redis.url
        ) as api:
            worker = subprocess.Popen(
                [sys.executable, "-c", "from vitalcam.cli import main; raise SystemExit(main(['worker']))"],
                env=env, cwd=Path(__file__).parent.parent,
            )  # fmt: skip
            try:
                yield {"api": api, "pg": pg, "redis": redis, "s3": s3, "bucket": "vitalcam-scaled"}
            finally:
                worker.terminate()
                worker.wait(20)


def call(api: Any, path: str, body: Any) -> httpx.Response:
    return httpx.post(f"{api.base_url}{path}", json=body, headers={"X-API-Key": api.api_key}, timeout=60)


def bucket_keys(stack: dict[str, Any]) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack["s3"].endpoint, region_name="us-east-1")
    return [o["Key"] for o in s3.list_objects_v2(Bucket=stack["bucket"]).get("Contents", [])]


def test_a_session_runs_through_bucket_queue_and_worker_and_leaves_nothing(stack: dict[str, Any]) -> None:
    api = stack["api"]
    started = call(api, "/sdk/session/start", {"demographics": {"age": 61}})
    assert started.status_code == 200, started.text
    session = started.json()
    assert session["upload_url"].startswith(stack["s3"].endpoint)  # presigned, straight to the bucket
    put = httpx.put(
        session["upload_url"], content=PAYLOAD, headers={"Content-Type": "video/webm"}, timeout=60
    )
    assert put.status_code == 200
    done = call(api, "/sdk/session/upload-complete", {"session_id": session["session_id"]})
    assert done.status_code == 200, done.text
    body = done.json()
    assert body["status"] == "completed" and body["session_id"] == session["session_id"]
    assert set(body["vitals"]) >= {"heart_rate", "confidence"}
    # PERSIST_VITALS=false: nothing in PostgreSQL's rows, the bucket or Redis after the response.
    sid = session["session_id"]
    assert stack["pg"].psql(f"SELECT count(*) FROM sessions WHERE id = '{sid}'").strip() == "0"
    assert bucket_keys(stack) == []
    keys = subprocess.run(
        ["redis-cli", "-p", str(stack["redis"].port), "--scan"], capture_output=True, text=True, check=True
    ).stdout
    assert sid not in keys
    assert call(api, "/sdk/session/upload-complete", {"session_id": sid}).status_code == 404


def test_a_bad_tensor_is_refused_at_upload_complete_and_the_session_stays_usable(
    stack: dict[str, Any],
) -> None:
    api = stack["api"]
    session = call(api, "/sdk/session/start", {}).json()
    assert httpx.put(session["upload_url"], content=b"not a tensor", timeout=30).status_code == 200
    refused = call(api, "/sdk/session/upload-complete", {"session_id": session["session_id"]})
    assert refused.status_code == 400 and refused.json()["error"] == "INVALID_REQUEST"
    status = httpx.get(
        f"{api.base_url}/sdk/session/result/{session['session_id']}", headers={"X-API-Key": api.api_key}
    ).json()["status"]
    assert status == "created"
    assert httpx.put(session["upload_url"], content=PAYLOAD, timeout=60).status_code == 200
    assert call(api, "/sdk/session/upload-complete", {"session_id": session["session_id"]}).status_code == 200


def test_s3_unavailable_at_upload_complete_is_a_retryable_503_and_nothing_is_lost(
    stack: dict[str, Any],
) -> None:
    api = stack["api"]
    session = call(api, "/sdk/session/start", {}).json()
    assert httpx.put(session["upload_url"], content=PAYLOAD, timeout=60).status_code == 200
    s3 = stack["s3"]
    s3.stop()
    try:
        down = call(api, "/sdk/session/upload-complete", {"session_id": session["session_id"]})
    finally:
        s3.start()
    assert down.status_code == 503 and down.json()["retryable"] is True, down.text
    # moto keeps everything in memory, so its restart lost the bucket and the upload (a real S3 keeps
    # both): recreate the bucket, PUT again, and the retried upload-complete succeeds.
    import boto3

    boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1").create_bucket(
        Bucket=stack["bucket"]
    )
    time.sleep(0.2)
    httpx.put(session["upload_url"], content=PAYLOAD, timeout=60)
    assert call(api, "/sdk/session/upload-complete", {"session_id": session["session_id"]}).status_code == 200
