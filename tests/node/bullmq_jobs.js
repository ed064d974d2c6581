// Puts jobs in every BullMQ state the tests check, then prints the queue's own counts as JSON.
// Usage: node bullmq_jobs.js PORT QUEUE
"use strict";
const { Queue, Worker } = require("bullmq");

const port = Number(process.argv[2]);
const name = process.argv[3];
const connection = { host: "127.0.0.1", port, maxRetriesPerRequest: null };

async function finishSome(queue, ok, bad) {
  const worker = new Worker(
    name,
    async (job) => {
      if (job.name === "bad") throw new Error("boom");
      return 1;
    },
    { connection, autorun: false },
  );
  const done = new Promise((resolve) => {
    let left = ok + bad;
    const settle = () => {
      left -= 1;
      if (left === 0) resolve();
    };
    worker.on("completed", settle);
    worker.on("failed", settle);
  });
  for (let i = 0; i < ok; i++) await queue.add("ok", { i });
  for (let i = 0; i < bad; i++) await queue.add("bad", { i }, { attempts: 1 });
  worker.run();
  await done;
  await worker.close();
}

// A worker that takes one job and never finishes it: that job stays active.
async function holdOne(queue) {
  const worker = new Worker(name, () => new Promise(() => {}), { connection, concurrency: 1 });
  const active = new Promise((resolve) => worker.on("active", resolve));
  await queue.add("stuck", {});
  await active;
  return worker;
}

async function main() {
  const queue = new Queue(name, { connection });
  await finishSome(queue, 2, 3);
  await holdOne(queue);
  const first = await queue.add("wait", { n: 0 });
  for (let i = 1; i < 4; i++) await queue.add("wait", { n: i });
  for (let i = 0; i < 5; i++) await queue.add("later", { i }, { delay: 3600000 });
  for (let i = 0; i < 2; i++) await queue.add("urgent", { i }, { priority: 1 + i });
  await queue.pause();
  const counts = await queue.getJobCounts();
  console.log(JSON.stringify({ counts, paused: await queue.isPaused(), oldest: first.timestamp }));
  process.exit(0); // the held worker would otherwise keep the process alive
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});
