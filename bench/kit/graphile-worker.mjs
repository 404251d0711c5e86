// The side-by-side kit's four modes for graphile-worker (see BENCHMARKS.md and
// `reviewq bench adapter`), so it is timed exactly as reviewq is:
//   node graphile-worker.mjs insert N | work N C | latworker N C | produce N RATE
// One JSON line on stdout; DATABASE_URL from the environment.
// Setup: npm install graphile-worker@0.16 pg (in this folder or any parent).
import { run, runMigrations, makeWorkerUtils } from "graphile-worker";
import pg from "pg";

const connectionString = process.env.DATABASE_URL;
const [mode, a, b] = process.argv.slice(2);
const n = Number(a);
const print = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now() / 1000;
// graphile-worker logs to stdout by default; the contract keeps stdout for the one line.
import { Logger } from "graphile-worker";
const logger = new Logger(() => (level, message) => {
  if (level === "error") process.stderr.write(message + "\n");
});

async function insert() {
  await runMigrations({ connectionString, logger });
  // graphile-worker's batch API is the add_jobs SQL function (0.16 has no JS wrapper).
  const client = new pg.Client({ connectionString });
  await client.connect();
  const t0 = now();
  for (let done = 0; done < n; done += 1000) {
    await client.query(
      `select graphile_worker.add_jobs(array(
         select json_populate_record(null::graphile_worker.job_spec,
                                     json_build_object('identifier', 'noop', 'payload', '{}'::json))
         from generate_series(1, $1)))`,
      [Math.min(1000, n - done)],
    );
  }
  const s = now() - t0;
  await client.end();
  print({ insert_s: s, insert_per_s: n / s });
}

async function work(c) {
  // The observer's connection is opened before the clock, as the kit says.
  const observer = new pg.Client({ connectionString });
  await observer.connect();
  let handled = 0;
  let first = null;
  const t0 = now();
  const runner = await run({
    connectionString,
    concurrency: c,
    noHandleSignals: true,
    pollInterval: 1000,
    logger,
    taskList: {
      noop: async () => {
        if (first === null) first = now() - t0;
        handled += 1;
      },
    },
  });
  let ok = false;
  const deadline = t0 + 600;
  while (now() < deadline) {
    if (handled >= n) {
      const { rows } = await observer.query("select count(*)::int as c from graphile_worker.jobs");
      if (rows[0].c === 0) {
        ok = true;
        break;
      }
    }
    await sleep(5);
  }
  const wall = now() - t0;
  await runner.stop();
  await observer.end();
  print({ ok, wall_s: wall, jobs_per_s: n / wall, first_job_s: first, handled });
}

async function latworker(c) {
  const lat = [];
  const runner = await run({
    connectionString,
    concurrency: c,
    noHandleSignals: true,
    pollInterval: 1000,
    logger,
    taskList: {
      noop: async (payload) => {
        if (payload && payload.t) lat.push((performance.timeOrigin + performance.now()) - payload.t);
      },
    },
  });
  await sleep(1000);
  process.stdout.write("READY\n");
  const deadline = now() + 600;
  while (lat.length < n && now() < deadline) await sleep(5);
  await runner.stop();
  const xs = lat.slice(0, n).sort((x, y) => x - y);
  const rank = (p) => xs[Math.max(0, Math.ceil((p / 100) * xs.length) - 1)];
  print({ ok: xs.length >= n, n: xs.length, p50_ms: rank(50), p95_ms: rank(95), p99_ms: rank(99), max_ms: xs[xs.length - 1] });
}

async function produce(rate) {
  const utils = await makeWorkerUtils({ connectionString, logger });
  const t0 = now();
  for (let i = 0; i < n; i++) {
    const due = t0 + i / rate;
    const wait = due - now();
    if (wait > 0) await sleep(wait * 1000);
    await utils.addJob("noop", { t: (performance.timeOrigin + performance.now()) });
  }
  const s = now() - t0;
  await utils.release();
  print({ produce_s: s });
}

const modes = { insert, work: () => work(Number(b)), latworker: () => latworker(Number(b)), produce: () => produce(Number(b)) };
if (!modes[mode]) {
  process.stderr.write(`unknown mode ${JSON.stringify(mode)}: insert|work|latworker|produce\n`);
  process.exit(2);
}
await modes[mode]();
process.exit(0);
