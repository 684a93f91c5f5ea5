"""Throughput of the reference backend: full start -> PUT -> upload-complete cycles per second on loopback.

Inference is replaced by a trivial function here (and only here) so the number measures the server
itself: auth, rate/quota accounting in SQLite, signed-URL checks, streaming the upload to disk, parsing
and validating the tensor, the thread-pool hop, and the privacy cleanup. Each client thread runs whole
sessions back to back over its own keep-alive connection; latency is reported per endpoint.

    python -m benchmarks.bench_server [--sessions 300] [--concurrency 8] [--duration-s 30] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from contract.tensor import FACE_REGIONS, Measurement, TensorMetadata, to_bytes
from server import start_embedded
from server.inference import InferenceResult

ENDPOINTS = ("start", "put", "complete")
_VITALS = {
    "heart_rate": 72.0,
    "respiratory_rate": 16.0,
    "hrv": 45.0,
    "spo2": 98.0,
    "systolic_bp": 120.0,
    "diastolic_bp": 80.0,
    "confidence": 0.8,
}


def trivial_infer(measurement: Measurement, demographics: Mapping[str, Any] | None) -> InferenceResult:
    return InferenceResult.from_vitals(dict(_VITALS), {"source": {}})


def traces_only_payload(duration_s: float, fps: float = 30.0) -> bytes:
    """A valid traces-only tensor (4 regions) with a 72 bpm pulse, as the SDK sends by default."""
    rng = np.random.default_rng(0)
    n_frames = round(duration_s * fps) + 1
    t_s = np.arange(n_frames, dtype=np.float64) / fps
    pulse = np.sin(2 * np.pi * 1.2 * t_s)[:, None, None] * np.array([0.3, 1.0, 0.2])
    rgb = (np.array([180.0, 130.0, 110.0]) + pulse + rng.normal(0, 0.1, (n_frames, 4, 3))).astype(np.float32)
    m = Measurement(
        t_s=t_s,
        rgb=rgb,
        skin_px=np.full((n_frames, 4), 2000, dtype=np.int32),
        face_box=np.tile(np.array([0.3, 0.2, 0.4, 0.5], dtype=np.float32), (n_frames, 1)),
        patches=None,
        meta=TensorMetadata(FACE_REGIONS, 640, 480, "video", "vitalcam-bench"),
    )
    return to_bytes(m)


def run(n_sessions: int, concurrency: int, duration_s: float) -> dict[str, Any]:
    payload = traces_only_payload(duration_s)
    latencies_ms: dict[str, list[float]] = {name: [] for name in ENDPOINTS}
    lock = threading.Lock()
    budget = iter(range(n_sessions))
    with start_embedded(
        infer=trivial_infer,
        rate_limit_per_hour=10 * n_sessions + 100,
        monthly_quota=n_sessions + 100,
        inference_workers=2,
    ) as server:

        def client_loop(_: int) -> int:
            done = 0
            with httpx.Client(
                base_url=server.base_url, headers={"X-API-Key": server.api_key}, timeout=60
            ) as c:
                while True:
                    with lock:
                        if next(budget, None) is None:
                            return done
                    timings = one_session(c, payload)
                    with lock:
                        for name, ms in timings.items():
                            latencies_ms[name].append(ms)
                    done += 1

        # Warm up (imports, first SQLite pages, connection set-up) outside the measurement.
        with httpx.Client(base_url=server.base_url, headers={"X-API-Key": server.api_key}) as warm:
            for _ in range(5):
                one_session(warm, payload)
        started_s = time.perf_counter()
        with ThreadPoolExecutor(concurrency) as pool:
            completed = sum(pool.map(client_loop, range(concurrency)))
        wall_s = time.perf_counter() - started_s
    return {
        "sessions": completed,
        "concurrency": concurrency,
        "payload_bytes": len(payload),
        "tensor_duration_s": duration_s,
        "wall_s": round(wall_s, 3),
        "sessions_per_s": round(completed / wall_s, 1),
        "latency_ms": {name: summarize(values) for name, values in latencies_ms.items()},
    }


def one_session(client: httpx.Client, payload: bytes) -> dict[str, float]:
    t0 = time.perf_counter()
    started = client.post("/sdk/session/start", json={"demographics": {"age": 40}})
    t1 = time.perf_counter()
    started.raise_for_status()
    body = started.json()
    put = client.put(body["upload_url"], content=payload, headers={"Content-Type": "video/webm"})
    t2 = time.perf_counter()
    put.raise_for_status()
    done = client.post("/sdk/session/upload-complete", json={"session_id": body["session_id"]})
    t3 = time.perf_counter()
    done.raise_for_status()
    if done.json()["vitals"]["confidence"] != _VITALS["confidence"]:
        raise RuntimeError(f"unexpected response: {done.text}")
    return {"start": (t1 - t0) * 1000, "put": (t2 - t1) * 1000, "complete": (t3 - t2) * 1000}


def summarize(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    return {
        "p50": round(statistics.median(ordered), 2),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 2),
        "max": round(ordered[-1], 2),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_server", description=__doc__)
    parser.add_argument("--sessions", type=int, default=300, help="full cycles to run (default 300)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument(
        "--duration-s", type=float, default=30.0, help="tensor length in seconds (default 30)"
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    result = run(args.sessions, args.concurrency, args.duration_s)
    print(
        f"{result['sessions']} sessions, {result['concurrency']} client threads, "
        f"{result['payload_bytes']} B traces-only tensor ({result['tensor_duration_s']:g} s): "
        f"{result['sessions_per_s']} sessions/s ({result['wall_s']} s)"
    )
    print(f"{'endpoint':<28}{'p50 ms':>10}{'p99 ms':>10}{'max ms':>10}")
    labels = {"start": "POST /sdk/session/start", "put": "PUT upload_url", "complete": "POST upload-complete"}
    for name in ENDPOINTS:
        stats = result["latency_ms"][name]
        print(f"{labels[name]:<28}{stats['p50']:>10.2f}{stats['p99']:>10.2f}{stats['max']:>10.2f}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
