"""Run hardbyte/postgresql-job-queue-benchmarking without Docker.

The harness starts its own Postgres with `docker compose`, restarts it the same
way for the postgres-restart phase, and hard-codes the bench role and port.
These machines have no Docker engine, so this wrapper swaps exactly those
pieces for the local cluster (pg_ctlcluster) before calling the harness's own
`main()`; the phases, hooks, metrics and summary are the harness's, unchanged.

It also makes the harness's two samplers reconnect after a restart: both keep
one connection for the whole run and would otherwise record nothing after the
postgres-restart phase.

Usage (see run.sh): python run_native.py run --systems reviewq ... (bench.py's CLI)
Environment: HARNESS_DIR (the harness checkout), REVIEWQ_BIN (release binary),
PG_ROLE/PG_PASSWORD/PG_PORT (default reviewq/reviewq/5432), PG_CLUSTER (15 main).
"""

import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, os.environ["HARNESS_DIR"])

import psycopg  # noqa: E402

from bench_harness import adapters as A  # noqa: E402
from bench_harness import metrics as M  # noqa: E402
from bench_harness import orchestrator as O  # noqa: E402
from bench_harness import wait_events as W  # noqa: E402

# pg_url() reads these module globals at call time.
A.PG_USER = os.environ.get("PG_ROLE", "reviewq")
A.PG_PASS = os.environ.get("PG_PASSWORD", "reviewq")
A.PG_PORT = int(os.environ.get("PG_PORT", "5432"))
CLUSTER = os.environ.get("PG_CLUSTER", "15 main").split()


def _ready(tries: int = 60) -> None:
    for _ in range(tries):
        try:
            with psycopg.connect(A.pg_url("postgres"), autocommit=True, connect_timeout=2) as c:
                c.execute("SELECT 1")
                return
        except psycopg.Error:
            time.sleep(1)
    raise RuntimeError("local Postgres did not become ready")


def _stop(_image=None) -> None:
    # The harness's container stops on SIGINT, which is Postgres's fast shutdown.
    subprocess.run(["pg_ctlcluster", *CLUSTER, "stop", "-m", "fast"], check=False)


def _start(_image=None) -> None:
    subprocess.run(["pg_ctlcluster", *CLUSTER, "start"], check=True)
    _ready()


O.start_postgres = lambda _image=None: _ready()
O.stop_postgres = lambda _image=None: None
O._compose_stop_postgres = _stop
O._compose_start_postgres = _start
O._restart_postgres = lambda _image=None: (_stop(), _start())

BIN = os.environ["REVIEWQ_BIN"]
A.ADAPTERS["reviewq"] = A.AdapterEntry(
    bench_dir=HERE.parent,  # holds adapter.json
    builder=lambda _skip: None,  # built by cargo beforehand
    launcher=lambda m, o: A.LaunchSpec(
        argv=[BIN, "bench", "adapter", "long-horizon"], env=A._base_env(m, o)
    ),
)


def _metrics_poll_loop(self, conn):
    period = self.period_s
    next_tick = M._next_aligned_tick(time.time(), period)
    while not self.stop_event.is_set():
        now = time.time()
        if now < next_tick:
            self.stop_event.wait(timeout=min(0.5, next_tick - now))
            continue
        try:
            if conn.closed or conn.broken:
                conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=2)
            self._poll_once(conn)
        except psycopg.Error as exc:
            print(f"[metrics] poll error: {exc}", file=sys.stderr)
        next_tick = max(next_tick + period, M._next_aligned_tick(time.time(), period))


def _wait_events_poll_loop(self, conn):
    while not self._stop_event.is_set():
        tick_start = time.time()
        try:
            if conn.closed or conn.broken:
                conn = psycopg.connect(self.database_url, autocommit=True, connect_timeout=2)
            self._poll_once(conn)
        except psycopg.Error as exc:
            print(f"[wait-events] poll error: {exc}", file=sys.stderr)
        remaining = self.sample_every_s - (time.time() - tick_start)
        if remaining > 0:
            self._stop_event.wait(timeout=remaining)


M.MetricsDaemon._poll_loop = _metrics_poll_loop
W.WaitEventSampler._poll_loop = _wait_events_poll_loop

raise SystemExit(O.main())
