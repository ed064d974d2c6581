// The demo's app server: Express with RED metrics (prom-client), a BullMQ queue "emails" in Redis and a
// worker consuming it in the same process. See README.md for the endpoints and the environment.
"use strict";

const crypto = require("node:crypto");
const express = require("express");
const IORedis = require("ioredis");
const client = require("prom-client");
const { Queue, Worker } = require("bullmq");

const config = {
  host: process.env.HOST || "127.0.0.1",
  port: Number(process.env.PORT || 3000),
  name: process.env.APP_NAME || "app",
  region: process.env.REGION || "primary",
  redisUrl: process.env.REDIS_URL || "redis://127.0.0.1:6379",
  redisPassword: process.env.REDIS_PASSWORD, // overrides a password in REDIS_URL; keeps it out of the URL
  redisTimeoutMs: Number(process.env.REDIS_TIMEOUT_MS || 500),
  queue: "emails",
  adminToken: process.env.ADMIN_TOKEN || "", // enables /admin/fault (drills); unset: no admin endpoint
};

// --- Fault injection (drills) ------------------------------------------------------------------------
// Real requests (/work, /jobs) can be made slow (delay_ms) and/or fail with a 500 (error_ratio) while
// /health, /ready and /metrics stay fine: what a health probe cannot see. Set at start by FAULT_DELAY_MS
// and FAULT_ERROR_RATIO, or at run time by PUT /admin/fault (bearer ADMIN_TOKEN).
const MAX_FAULT_DELAY_MS = 10000;
function faultSettings(delayMs, errorRatio) {
  const delay = Number(delayMs ?? 0);
  const ratio = Number(errorRatio ?? 0);
  if (!Number.isFinite(delay) || delay < 0 || delay > MAX_FAULT_DELAY_MS) {
    throw new Error(`delay_ms: expected a number of milliseconds from 0 to ${MAX_FAULT_DELAY_MS}`);
  }
  if (!Number.isFinite(ratio) || ratio < 0 || ratio > 1) throw new Error("error_ratio: expected a number from 0 to 1");
  return { delayMs: delay, errorRatio: ratio };
}
let fault = faultSettings(process.env.FAULT_DELAY_MS, process.env.FAULT_ERROR_RATIO);

function log(msg, fields = {}) {
  process.stdout.write(`${JSON.stringify({ time: new Date().toISOString(), app: config.name, msg, ...fields })}\n`);
}

// Error tracking (read by logs/mtail/app.mtail): one line per 5xx answer ("request failed"), per error a
// route did not handle ("uncaught error") and per failed Redis command ("redis error"), each with the
// route template, never the raw path; error texts are cut to ERROR_CHARS.
const ERROR_CHARS = 500;
function errorText(err) {
  return String((err && err.message) || err).slice(0, ERROR_CHARS);
}
function routeOf(req) {
  // (baseUrl is unset again by the time an errored request finishes)
  return req.route ? `${req.baseUrl || ""}${req.route.path}` : "unmatched";
}
function redisFailed(req, err) {
  // a reply from Redis (MISCONF, OOM, READONLY, ...), per occurrence; connection errors are logged once
  // per outage by the connections' error handlers
  if (err && err.name === "ReplyError") {
    log("redis error", { level: "error", route: routeOf(req), error: errorText(err) });
  }
}

const lastErrors = new Map();
function logOnce(source, err) {
  if (lastErrors.get(source) !== err.message) log(`${source} error`, { error: err.message });
  lastErrors.set(source, err.message);
}

// --- Redis -------------------------------------------------------------------------------------------

function redisOptions(extra) {
  const options = { connectTimeout: 2000, retryStrategy: (times) => Math.min(times * 200, 2000), ...extra };
  if (config.redisPassword) options.password = config.redisPassword;
  return options;
}

// Health checks and the cache fail fast when Redis is away instead of queueing commands.
const redis = new IORedis(config.redisUrl, redisOptions({ enableOfflineQueue: false, maxRetriesPerRequest: 0 }));
// BullMQ: the producer fails fast too; the worker's connection must retry forever (BullMQ's requirement).
const producerConnection = new IORedis(
  config.redisUrl,
  redisOptions({ enableOfflineQueue: false, maxRetriesPerRequest: 1 }),
);
const workerConnection = new IORedis(config.redisUrl, redisOptions({ maxRetriesPerRequest: null }));
for (const [role, conn] of [
  ["main", redis],
  ["producer", producerConnection],
  ["worker", workerConnection],
]) {
  // ioredis reconnects by itself; log each error once per outage, never the URL (it may hold a password)
  conn.on("error", (err) => logOnce(`redis ${role}`, err));
  conn.on("ready", () => lastErrors.clear());
}

function withTimeout(promise, ms) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`timed out after ${ms} ms`)), ms);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function redisStatus() {
  const started = process.hrtime.bigint();
  try {
    await withTimeout(redis.ping(), config.redisTimeoutMs);
    return { status: "up", latency_ms: Number(process.hrtime.bigint() - started) / 1e6 };
  } catch (err) {
    return { status: "down", error: err.message };
  }
}

// --- Metrics (RED: rate, errors, duration) -----------------------------------------------------------

const registry = new client.Registry();
client.collectDefaultMetrics({ register: registry });
const requests = new client.Counter({
  name: "http_requests_total",
  help: "HTTP requests served, by method, route template and status code",
  labelNames: ["method", "route", "status"],
  registers: [registry],
});
const duration = new client.Histogram({
  name: "http_request_duration_seconds",
  help: "HTTP request duration in seconds, by method, route template and status code",
  labelNames: ["method", "route", "status"],
  buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5],
  registers: [registry],
});
const jobs = new client.Counter({
  name: "app_jobs_processed_total",
  help: "Queue jobs this process finished, by queue and outcome",
  labelNames: ["queue", "status"],
  registers: [registry],
});
new client.Gauge({
  name: "app_info",
  help: "Which app server this is (value 1)",
  labelNames: ["name", "region"],
  registers: [registry],
}).set({ name: config.name, region: config.region }, 1);

// --- HTTP --------------------------------------------------------------------------------------------

const app = express();
app.disable("x-powered-by");
app.use(express.json({ limit: "64kb" }));

// names the app server in every answer, so a client behind the LBs can tell where it landed
app.use((_req, res, next) => {
  res.set("X-Backend", config.name);
  next();
});

app.use((req, res, next) => {
  const end = duration.startTimer();
  res.on("finish", () => {
    // the route template, never the raw path: labels stay bounded whatever the clients send
    const route = routeOf(req);
    const labels = { method: req.method, route, status: String(res.statusCode) };
    requests.inc(labels);
    end(labels);
    if (res.statusCode >= 500) {
      log("request failed", { level: "error", route, method: req.method, status: res.statusCode });
    }
  });
  next();
});

let shuttingDown = false;

async function injectFault(_req, res, next) {
  const { delayMs, errorRatio } = fault;
  if (delayMs) await new Promise((resolve) => setTimeout(resolve, delayMs));
  if (errorRatio && Math.random() < errorRatio) {
    res.status(500).json({ error: "injected fault", name: config.name });
    return;
  }
  next();
}

function sameSecret(given, expected) {
  // hash both so the comparison takes the same time whatever the lengths
  const a = crypto.createHash("sha256").update(given).digest();
  const b = crypto.createHash("sha256").update(expected).digest();
  return crypto.timingSafeEqual(a, b);
}

function adminAllowed(req, res) {
  const header = req.get("authorization") || "";
  if (header.startsWith("Bearer ") && sameSecret(header.slice(7), config.adminToken)) return true;
  res.status(401).json({ error: "unauthorized" });
  return false;
}

if (config.adminToken) {
  app.all("/admin/fault", (req, res) => {
    if (!adminAllowed(req, res)) return;
    if (req.method === "PUT") {
      const body = req.body && typeof req.body === "object" ? req.body : {};
      try {
        fault = faultSettings(body.delay_ms, body.error_ratio);
      } catch (err) {
        res.status(400).json({ error: err.message });
        return;
      }
      log("fault injection", { delay_ms: fault.delayMs, error_ratio: fault.errorRatio });
    } else if (req.method !== "GET") {
      res.status(405).json({ error: "GET or PUT" });
      return;
    }
    res.json({ delay_ms: fault.delayMs, error_ratio: fault.errorRatio });
  });

  // Drills: a route that fails with an error nobody handles (a rejected promise), to show an uncaught
  // error end to end: the error handler below logs it, Express answers 500.
  app.get("/admin/throw", async (req, res) => {
    if (!adminAllowed(req, res)) return;
    await Promise.resolve();
    throw new Error("thrown on purpose by GET /admin/throw");
  });
}

// Liveness: 200 while the process serves HTTP, even when Redis is away (then "degraded"), so an app
// instance is not reported down, nor taken out of the LB, when only Redis is. Readiness is /ready.
app.get("/health", async (_req, res) => {
  const redisState = await redisStatus();
  res.status(shuttingDown ? 503 : 200).json({
    status: shuttingDown ? "stopping" : redisState.status === "up" ? "ok" : "degraded",
    name: config.name,
    region: config.region,
    redis: redisState,
  });
});

// Readiness: 503 unless Redis answers within REDIS_TIMEOUT_MS (the app cannot enqueue jobs without it).
app.get("/ready", async (_req, res) => {
  const redisState = await redisStatus();
  const ready = !shuttingDown && redisState.status === "up";
  res.status(ready ? 200 : 503).json({ ready, name: config.name, region: config.region, redis: redisState });
});

app.get("/metrics", async (_req, res) => {
  res.set("Content-Type", registry.contentType);
  res.send(await registry.metrics());
});

const queue = new Queue(config.queue, { connection: producerConnection });
queue.on("error", (err) => logOnce("queue", err));

app.post("/jobs", injectFault, async (req, res) => {
  const body = req.body && typeof req.body === "object" ? req.body : {};
  const to = typeof body.to === "string" ? body.to.slice(0, 200) : "someone@example.com";
  try {
    const job = await withTimeout(
      queue.add("send", { to, from: config.name }, { removeOnComplete: 1000, removeOnFail: 1000 }),
      2000,
    );
    res.status(202).json({ id: job.id, queue: config.queue });
  } catch (err) {
    redisFailed(req, err);
    res.status(503).json({ error: "queue unavailable", detail: err.message });
  }
});

// Fake work for traffic: some CPU, an optional delay (?ms=, at most 5000) and a cache lookup in Redis
// (hits and misses show in the Redis tier's keyspace counters). A warm cache: 100 entries kept 10
// minutes, so at the demo's 10 requests/s about 98 % of lookups hit. Answers even when Redis is away.
const CACHE_TTL_SECONDS = 600;
app.get("/work", injectFault, async (req, res) => {
  const delay = Math.min(Math.max(Number(req.query.ms) || 0, 0), 5000);
  let digest = crypto.randomBytes(32);
  for (let i = 0; i < 200; i++) digest = crypto.createHash("sha256").update(digest).digest();
  if (delay) await new Promise((resolve) => setTimeout(resolve, delay));
  const key = `cache:work:${crypto.randomInt(100)}`;
  let cache = "unavailable";
  try {
    const hit = await withTimeout(redis.get(key), config.redisTimeoutMs);
    cache = hit === null ? "miss" : "hit";
    if (hit === null) await withTimeout(redis.set(key, digest.toString("hex"), "EX", CACHE_TTL_SECONDS), config.redisTimeoutMs);
  } catch (err) {
    redisFailed(req, err); // the work itself does not need Redis
  }
  res.json({ name: config.name, region: config.region, cache, digest: digest.toString("hex").slice(0, 16) });
});

// --- Worker ------------------------------------------------------------------------------------------

const worker = new Worker(
  config.queue,
  async (job) => {
    // "send" an email: a short pause stands in for the SMTP round trip
    await new Promise((resolve) => setTimeout(resolve, 5 + crypto.randomInt(20)));
    return { sentBy: config.name, to: job.data.to };
  },
  { connection: workerConnection, concurrency: 5 },
);
worker.on("completed", () => jobs.inc({ queue: config.queue, status: "completed" }));
worker.on("failed", () => jobs.inc({ queue: config.queue, status: "failed" }));
worker.on("error", (err) => logOnce("worker", err));

// Errors a route did not handle (thrown, or a rejected promise: Express 5 passes both here): a client
// error such as a malformed JSON body keeps its 4xx; anything else is one "uncaught error" line (with
// its stack, cut short) and a 500. Answered here rather than by Express's default handler, which
// prints stacks (and the request body of a parse error) as plain text lines on stderr.
app.use((err, req, res, next) => {
  const status = Number((err && (err.status || err.statusCode)) || 500);
  const clientError = status >= 400 && status < 500;
  if (!clientError) {
    const stack = String((err && err.stack) || "").slice(0, 2000);
    log("uncaught error", { level: "error", route: routeOf(req), error: errorText(err), stack });
  }
  if (res.headersSent) {
    next(err); // Express closes the connection
    return;
  }
  if (clientError) res.status(status).json({ error: err.expose ? errorText(err) : "bad request" });
  else res.status(500).json({ error: "internal error", name: config.name });
});

// --- Start and graceful stop -------------------------------------------------------------------------

const server = app.listen(config.port, config.host, () => {
  log("listening", { host: config.host, port: config.port, region: config.region });
});
server.on("error", (err) => {
  log("cannot listen", { error: err.message });
  process.exit(1);
});

async function shutdown(signal) {
  if (shuttingDown) return;
  shuttingDown = true;
  log("stopping", { signal });
  const deadline = setTimeout(() => {
    log("forced exit: shutdown took longer than 10 s");
    process.exit(1);
  }, 10000);
  deadline.unref();
  // stop accepting, finish in-flight requests, let the worker finish its active jobs, then close Redis
  const closed = new Promise((resolve) => server.close(resolve));
  server.closeIdleConnections();
  await closed;
  // with Redis away, active jobs cannot be marked done anyway: do not wait for them
  const force = workerConnection.status !== "ready";
  await withTimeout(worker.close(force), 5000).catch((err) => log("worker close", { error: err.message }));
  await withTimeout(queue.close(), 1000).catch(() => {});
  await Promise.allSettled(
    [redis, producerConnection, workerConnection].map((conn) =>
      withTimeout(conn.quit(), 1000).catch(() => conn.disconnect()),
    ),
  );
  log("stopped");
  process.exit(0);
}

// An error outside any request (or a promise rejection nobody handles): logged as one JSON line, then the
// process exits 1 as Node would without this handler.
process.on("uncaughtException", (err) => {
  const stack = String((err && err.stack) || "").slice(0, 2000);
  log("uncaught error", { level: "error", route: "-", error: errorText(err), stack });
  process.exit(1);
});

process.on("SIGTERM", () => shutdown("SIGTERM"));
process.on("SIGINT", () => shutdown("SIGINT"));
