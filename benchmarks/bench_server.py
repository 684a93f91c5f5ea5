"""Sessions per second of the reference backend, embedded and scaled, with real inference, on loopback.

Each configuration runs the same load: `--concurrency` client threads doing whole sessions (start -> PUT
-> upload-complete) back to back, each on its own keep-alive connection, with a 30 s SDK-like
traces-only tensor and the installed inference engine. Reported per configuration: sessions/s, its ratio
to the embedded configuration measured in the same run, and end-to-end session latency p50/p99.

- embedded: `vitalcam serve` as shipped, in a process of its own: SQLite, a folder, inference on the
  process's thread pool (2 threads). Measured first and again last: the second figure shows how much the
  machine's other load moved during the run, and ratios are to the mean of the two.
- scaled N x M: PostgreSQL, moto's S3 server (an emulator, single process), Redis, `vitalcam serve
  --workers N` and M `vitalcam worker` processes (concurrency 1 each). The servers are the real programs
  of tests/services.py on ephemeral ports (PostgreSQL and Redis from Debian, moto from the dev extra).

Everything, the load generator included, shares this machine's cores, so the figures say where the
bottleneck moves on this machine, not what a cluster would do. The machine's load average is printed
before and after: on a shared machine, compare ratios within one run, not absolute figures across runs.

    python -m benchmarks.bench_server [--api 1,2,4] [--workers 1,2,3,4] [--sessions 40] [--concurrency 8]
                                      [--json PATH]
    python -m benchmarks.bench_server --trivial-inference   # the embedded server alone, inference stubbed
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from contract.tensor import Measurement
from server import create_key, start_embedded
from server.inference import InferenceResult

ROOT = Path(__file__).resolve().parents[1]
_VITALS = {
    "heart_rate": 72.0,
    "respiratory_rate": 16.0,
    "hrv": 45.0,
    "spo2": 98.0,
    "systolic_bp": 120.0,
    "diastolic_bp": 80.0,
    "confidence": 0.8,
}
_LIMITS: dict[str, Any] = {"rate_limit_per_hour": 10_000_000, "monthly_quota": 10_000_000}


def trivial_infer(measurement: Measurement, demographics: Mapping[str, Any] | None) -> InferenceResult:
    return InferenceResult.from_vitals(dict(_VITALS), {"source": {}})


def sdk_payload(duration_s: float = 30.0) -> bytes:
    """A traces-only tensor as the SDK sends by default (all face regions, a 72 bpm pulse, sensor noise)."""
    from tests.tensors import make_payload

    return make_payload(duration_s=duration_s, hr_bpm=72.0, seed=1)


def one_session(client: httpx.Client, payload: bytes) -> dict[str, float]:
    t0 = time.perf_counter()
    started = client.post("/sdk/session/start", json={"demographics": {"age": 40}})
    started.raise_for_status()
    body = started.json()
    t1 = time.perf_counter()
    # A presigned S3 URL is absolute and goes to the bucket; the embedded one comes back to the API.
    httpx.put(body["upload_url"], content=payload, headers={"Content-Type": "video/webm"}, timeout=120)
    t2 = time.perf_counter()
    done = client.post("/sdk/session/upload-complete", json={"session_id": body["session_id"]})
    t3 = time.perf_counter()
    done.raise_for_status()
    if done.json()["status"] != "completed":
        raise RuntimeError(f"unexpected response: {done.text}")
    return {"start": t1 - t0, "put": t2 - t1, "complete": t3 - t2, "session": t3 - t0}


def drive(
    base_url: str,
    api_key: str,
    payload: bytes,
    n_sessions: int,
    concurrency: int,
    groups: Mapping[str, list[int]] | None = None,
) -> dict[str, Any]:
    """Warm up, then run `n_sessions` whole sessions from `concurrency` threads: throughput, latency,
    and the CPU time each group of processes (`groups`: name -> root pids) spent per session."""
    latencies: dict[str, list[float]] = {"start": [], "put": [], "complete": [], "session": []}
    lock = threading.Lock()
    budget = iter(range(n_sessions))

    def client_loop(_: int) -> int:
        done = 0
        with httpx.Client(base_url=base_url, headers={"X-API-Key": api_key}, timeout=300) as client:
            while True:
                with lock:
                    if next(budget, None) is None:
                        return done
                timings = one_session(client, payload)
                with lock:
                    for name, seconds in timings.items():
                        latencies[name].append(seconds * 1000)
                done += 1

    # Warm-up outside the measurement: imports, first pages, connections; every worker picks up a job.
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: _warm(base_url, api_key, payload), range(concurrency)))
    groups = {**(groups or {})}
    cpu_before = {name: tree_cpu_s(pids) for name, pids in groups.items()}
    client_before = resource.getrusage(resource.RUSAGE_SELF)
    started_s = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        completed = sum(pool.map(client_loop, range(concurrency)))
    wall_s = time.perf_counter() - started_s
    client_after = resource.getrusage(resource.RUSAGE_SELF)
    cpu_ms = {
        name: round((tree_cpu_s(pids) - cpu_before[name]) * 1000 / completed, 1)
        for name, pids in groups.items()
    }
    client_s = (client_after.ru_utime + client_after.ru_stime) - (
        client_before.ru_utime + client_before.ru_stime
    )
    cpu_ms["load generator"] = round(client_s * 1000 / completed, 1)
    return {
        "sessions": completed,
        "wall_s": round(wall_s, 2),
        "sessions_per_s": round(completed / wall_s, 2),
        "latency_ms": {name: summarize(values) for name, values in latencies.items()},
        "cpu_ms_per_session": cpu_ms,
    }


def tree_cpu_s(roots: list[int]) -> float:
    """CPU seconds (user + system) used so far by the processes `roots` and all their live descendants,
    plus what their exited children used (from /proc; a process's counters only grow)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid = int(stat.parent.name)
        parent[pid] = int(fields[1])
        used[pid] = sum(int(x) for x in fields[11:15]) / ticks  # utime, stime, cutime, cstime
    wanted = set(roots)
    total = 0.0
    for pid, seconds in used.items():
        ancestor, hops = pid, 0
        while ancestor not in wanted and ancestor in parent and hops < 64:
            ancestor, hops = parent[ancestor], hops + 1
        if ancestor in wanted:
            total += seconds
    return total


def _warm(base_url: str, api_key: str, payload: bytes) -> None:
    with httpx.Client(base_url=base_url, headers={"X-API-Key": api_key}, timeout=300) as client:
        one_session(client, payload)


def summarize(values_ms: list[float]) -> dict[str, float]:
    ordered = sorted(values_ms)
    return {
        "p50": round(statistics.median(ordered), 1),
        "p99": round(ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))], 1),
        "max": round(ordered[-1], 1),
    }


# ---- configurations ------------------------------------------------------------------------------------


def run_embedded_in_process(payload: bytes, n_sessions: int, concurrency: int) -> dict[str, Any]:
    """`start_embedded` with inference stubbed out, in this process: what the server itself costs."""
    with start_embedded(infer=trivial_infer, inference_workers=2, **_LIMITS) as server:
        return drive(server.base_url, server.api_key, payload, n_sessions, concurrency)


class Scaled:
    """PostgreSQL, Redis and moto once; API processes and workers started and stopped per configuration."""

    def __init__(self, stack: contextlib.ExitStack, root: Path, *, start_services: bool = True) -> None:
        from tests import services

        os.environ.setdefault("AWS_ACCESS_KEY_ID", "bench")
        os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "bench")
        self.services = services
        self.root = root
        self.workers: list[subprocess.Popen[bytes]] = []
        self.serving: subprocess.Popen[bytes] | None = None
        self.env = dict(os.environ)
        if not start_services:
            return
        pg = self.pg = stack.enter_context(services.postgres())
        redis = self.redis = stack.enter_context(services.redis(root / "redis"))
        s3 = self.s3 = stack.enter_context(services.s3_server())
        self.env = {
            **os.environ,
            "VITALCAM_DATABASE_URL": pg.url,
            "VITALCAM_BLOB_STORE": s3.blob_store_url("vitalcam-bench"),
            "VITALCAM_QUEUE_URL": redis.url,
            "VITALCAM_DATA_DIR": str(root / "data"),
            "VITALCAM_RATE_LIMIT_PER_HOUR": str(_LIMITS["rate_limit_per_hour"]),
            "VITALCAM_MONTHLY_QUOTA": str(_LIMITS["monthly_quota"]),
        }
        self.api_key = create_key(root / "data", "bench", database_url=pg.url)
        stack.callback(self.set_workers, 0)

    def _spawn(
        self, *args: str, log: Path | None = None, env: dict[str, str] | None = None
    ) -> subprocess.Popen[bytes]:
        code = "from vitalcam.cli import main; raise SystemExit(main())"
        out = log.open("wb") if log is not None else subprocess.DEVNULL
        return subprocess.Popen(
            [sys.executable, "-c", code, *args],
            env=env or self.env,
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def set_workers(self, n: int) -> None:
        """Exactly `n` workers, each connected to the queue (its log says so) before this returns."""
        from server.queue import WORKER_READY

        logs = []
        while len(self.workers) < n:
            logs.append(self.root / f"worker-{time.monotonic_ns()}.log")
            self.workers.append(self._spawn("worker", log=logs[-1]))
        while len(self.workers) > n:
            _stop(self.workers.pop())
        deadline = time.monotonic() + 180
        while not all(WORKER_READY in log.read_text(errors="replace") for log in logs):
            if time.monotonic() > deadline:
                raise RuntimeError("a worker did not start")
            time.sleep(0.2)

    def groups(self, scaled: bool) -> dict[str, list[int]]:
        """Root pids of each part, for `tree_cpu_s`."""
        assert self.serving is not None
        found = {"API": [self.serving.pid]}
        if scaled:
            found["workers"] = [w.pid for w in self.workers]
            for name, service in (("PostgreSQL", self.pg), ("Redis", self.redis), ("S3 (moto)", self.s3)):
                assert service.process is not None
                found[name] = [service.process.pid]
        return found

    @contextlib.contextmanager
    def api(self, n_processes: int) -> Iterator[str]:
        with self._serve(self.env, "--workers", str(n_processes)) as base_url:
            yield base_url

    @contextlib.contextmanager
    def embedded(self) -> Iterator[tuple[str, str]]:
        """`vitalcam serve` as shipped: one process, SQLite and a folder in a fresh data dir, inference
        on its 2 threads; a process of its own, like the scaled ones, so the load generator's threads do
        not share its interpreter."""
        data_dir = self.root / f"embedded-{time.monotonic_ns()}"
        env = {
            name: value
            for name, value in self.env.items()
            if name not in ("VITALCAM_DATABASE_URL", "VITALCAM_BLOB_STORE", "VITALCAM_QUEUE_URL")
        }
        env["VITALCAM_DATA_DIR"] = str(data_dir)
        api_key = create_key(data_dir, "bench")
        with self._serve(env) as base_url:
            yield base_url, api_key

    @contextlib.contextmanager
    def _serve(self, env: dict[str, str], *args: str) -> Iterator[str]:
        port = self.services.free_port()
        process = self.serving = self._spawn("serve", "--port", str(port), *args, env=env)
        base_url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 180
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(f"{base_url}/health", timeout=2).status_code == 200:
                        break
                if process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("vitalcam serve did not start")
                time.sleep(0.2)
            yield base_url
        finally:
            _stop(process)


def missing_servers() -> str:
    """The server programs the scaled configurations need that this machine lacks ("" when none)."""
    import importlib.util
    import shutil

    from tests import services

    missing = [
        name
        for name, present in (
            ("PostgreSQL", (services.PG_BIN / "postgres").exists()),
            ("redis-server", shutil.which("redis-server") is not None),
            ("moto[server]", importlib.util.find_spec("moto") is not None),
        )
        if not present
    ]
    return ", ".join(missing)


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(10)


def run_all(
    api_counts: list[int], worker_counts: list[int], n_sessions: int, concurrency: int
) -> dict[str, Any]:
    """The embedded baseline first and again last (how much the shared machine drifted during the run),
    the scaled grid in between; ratios are to the mean of the two baseline runs."""
    payload = sdk_payload()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    started_s = time.perf_counter()
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-server-")))
        missing = missing_servers()
        if missing:
            print(f"scaled configurations skipped: {missing} not installed (.ci/run installs them)")
            api_counts = []
        scaled = Scaled(stack, root, start_services=not missing)

        def embedded(label: str) -> None:
            print(f"embedded ({label}) ...", flush=True)
            with scaled.embedded() as (base_url, api_key):
                measured = drive(base_url, api_key, payload, n_sessions, concurrency, scaled.groups(False))
            rows.append(
                {"config": f"embedded ({label})", "api": 1, "workers": "in-process, 2 threads", **measured}
            )

        embedded("first")
        for n_api in api_counts:
            with scaled.api(n_api) as base_url:
                for n_workers in worker_counts:
                    scaled.set_workers(n_workers)
                    print(f"scaled: {n_api} API x {n_workers} workers ...", flush=True)
                    groups = scaled.groups(True)
                    measured = drive(base_url, scaled.api_key, payload, n_sessions, concurrency, groups)
                    rows.append({"config": "scaled", "api": n_api, "workers": n_workers, **measured})
        scaled.set_workers(0)
        embedded("last")
    baselines = [row["sessions_per_s"] for row in rows if row["config"].startswith("embedded")]
    baseline = statistics.mean(baselines)
    for row in rows:
        row["vs_embedded"] = round(row["sessions_per_s"] / baseline, 2)
    return {
        "payload_bytes": len(payload),
        "concurrency": concurrency,
        "sessions_per_config": n_sessions,
        "cpu_count": os.cpu_count(),
        "load_average_before": [round(x, 1) for x in load_before],
        "load_average_after": [round(x, 1) for x in os.getloadavg()],
        "embedded_drift": round(baselines[-1] / baselines[0], 2),
        "total_s": round(time.perf_counter() - started_s, 1),
        "rows": rows,
    }


def print_table(result: dict[str, Any]) -> None:
    print(
        f"\n{result['sessions_per_config']} sessions per configuration, {result['concurrency']} clients, "
        f"{result['payload_bytes']} B tensor, real inference; {result['cpu_count']} cores; load average "
        f"{result['load_average_before']} before, {result['load_average_after']} after; "
        f"{result['total_s']} s in all; embedded last/first {result['embedded_drift']}"
    )
    print("| configuration | API processes | workers | sessions/s | vs embedded | session p50 ms | p99 ms |")
    print("|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        latency = row["latency_ms"]["session"]
        print(
            f"| {row['config']} | {row['api']} | {row['workers']} | {row['sessions_per_s']:.2f} | "
            f"{row['vs_embedded']:.2f} | {latency['p50']:.0f} | {latency['p99']:.0f} |"
        )
    names = ["API", "workers", "PostgreSQL", "Redis", "S3 (moto)", "load generator"]
    print(
        "\nCPU ms per session (user + system, all processes of each part; much less sensitive than wall time to the machine's other load):"
    )
    print("| configuration | API processes | workers | " + " | ".join(names) + " |")
    print("|---" * (3 + len(names)) + "|")
    for row in result["rows"]:
        cpu = row["cpu_ms_per_session"]
        cells = " | ".join(f"{cpu[n]:.0f}" if n in cpu else "—" for n in names)
        print(f"| {row['config']} | {row['api']} | {row['workers']} | {cells} |")


def _counts(text: str) -> list[int]:
    return [int(part) for part in text.split(",") if part.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.bench_server", description=__doc__)
    parser.add_argument("--api", type=_counts, default=[1, 2, 4], help="API process counts (default 1,2,4)")
    parser.add_argument(
        "--workers", type=_counts, default=[1, 2, 3, 4], help="worker counts (default 1,2,3,4)"
    )
    parser.add_argument("--sessions", type=int, default=40, help="sessions per configuration (default 40)")
    parser.add_argument("--concurrency", type=int, default=8, help="client threads (default 8)")
    parser.add_argument(
        "--trivial-inference",
        action="store_true",
        help="only the embedded server, with inference stubbed out: what the server itself costs",
    )
    parser.add_argument("--json", type=Path, help="also write the results as JSON to this path")
    args = parser.parse_args(argv)
    if args.trivial_inference:
        result: dict[str, Any] = run_embedded_in_process(sdk_payload(), args.sessions, args.concurrency)
        print(f"embedded, trivial inference: {result['sessions_per_s']} sessions/s ({result['wall_s']} s)")
        for name, stats in result["latency_ms"].items():
            print(f"  {name:<9} p50 {stats['p50']:8.1f} ms  p99 {stats['p99']:8.1f} ms")
    else:
        result = run_all(args.api, args.workers, args.sessions, args.concurrency)
        print_table(result)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
