// The side-by-side kit's four modes for pg-boss 10 (see BENCHMARKS.md):
//   node pg-boss.mjs insert N | work N C | latworker N C | produce N RATE
// One JSON line on stdout; DATABASE_URL from the environment.
// Setup: npm install pg-boss@10 (in this folder or any parent).
// Concurrency C is C `work` subscriptions fetching one job at a time (pg-boss 10 has no
// per-worker concurrency setting); they poll at pg-boss's minimum interval, 0.5 s, and
// fetch again at once while they find jobs.
import PgBoss from "pg-boss";
import pg from "pg";

const connectionString = process.env.DATABASE_URL;
const [mode, a, b] = process.argv.slice(2);
const n = Number(a);
const QUEUE = "noop";
const print = (o) => process.stdout.write(JSON.stringify(o) + "\n");
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => performance.now() / 1000;
const wallMs = () => performance.timeOrigin + performance.now();

async function boss() {
  const b = new PgBoss({ connectionString, supervise: false, schedule: false });
  b.on("error", (e) => process.stderr.write(String(e) + "\n"));
  await b.start();
  await b.createQueue(QUEUE);
  return b;
}

async function subscribe(b, c, handle) {
  for (let i = 0; i < c; i++) {
    await b.work(QUEUE, { batchSize: 1, pollingIntervalSeconds: 0.5 }, async (jobs) => {
      for (const job of jobs) handle(job);
    });
  }
}

async function insert() {
  const b = await boss();
  const t0 = now();
  for (let done = 0; done < n; done += 1000) {
    await b.insert(Array.from({ length: Math.min(1000, n - done) }, () => ({ name: QUEUE, data: {} })));
  }
  const s = now() - t0;
  await b.stop({ graceful: false });
  print({ insert_s: s, insert_per_s: n / s });
}

async function work(c) {
  const observer = new pg.Client({ connectionString });
  await observer.connect();
  let handled = 0;
  let first = null;
  const t0 = now();
  const b = await boss();
  await subscribe(b, c, () => {
    if (first === null) first = now() - t0;
    handled += 1;
  });
  let ok = false;
  while (now() < t0 + 600) {
    if (handled >= n) {
      const { rows } = await observer.query(
        "select count(*)::int as c from pgboss.job where name = $1 and state < 'completed'",
        [QUEUE],
      );
      if (rows[0].c === 0) {
        ok = true;
        break;
      }
    }
    await sleep(5);
  }
  const wall = now() - t0;
  await b.stop({ graceful: false });
  await observer.end();
  print({ ok, wall_s: wall, jobs_per_s: n / wall, first_job_s: first, handled });
}

async function latworker(c) {
  const lat = [];
  const b = await boss();
  await subscribe(b, c, (job) => {
    if (job.data && job.data.t) lat.push(wallMs() - job.data.t);
  });
  await sleep(1000);
  process.stdout.write("READY\n");
  const deadline = now() + 600;
  while (lat.length < n && now() < deadline) await sleep(5);
  await b.stop({ graceful: false });
  const xs = lat.slice(0, n).sort((x, y) => x - y);
  const rank = (p) => xs[Math.max(0, Math.ceil((p / 100) * xs.length) - 1)];
  print({ ok: xs.length >= n, n: xs.length, p50_ms: rank(50), p95_ms: rank(95), p99_ms: rank(99), max_ms: xs[xs.length - 1] });
}

async function produce(rate) {
  const b = await boss();
  const t0 = now();
  for (let i = 0; i < n; i++) {
    const wait = t0 + i / rate - now();
    if (wait > 0) await sleep(wait * 1000);
    await b.send(QUEUE, { t: wallMs() });
  }
  const s = now() - t0;
  await b.stop({ graceful: false });
  print({ produce_s: s });
}

const modes = { insert, work: () => work(Number(b)), latworker: () => latworker(Number(b)), produce: () => produce(Number(b)) };
if (!modes[mode]) {
  process.stderr.write(`unknown mode ${JSON.stringify(mode)}: insert|work|latworker|produce\n`);
  process.exit(2);
}
await modes[mode]();
process.exit(0);
