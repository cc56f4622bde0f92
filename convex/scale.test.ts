/**
 * The largest legitimate transactions at N = 1,000 counted instances, each failing 16 panic
 * checks, measured as Convex bills them (dev/convex-local's UsageMeter: documents and bytes read
 * and written, index entries included) and held to Convex cloud's limits per transaction:
 * 16,000 documents and 8 MiB read, 8,000 documents and 8 MiB written. The figures are printed
 * (docs/convex.md quotes them): `npx vitest run convex/scale.test.ts`.
 */
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import { installDatabaseObserver } from "../dev/convex-local/syscalls";
import { UsageMeter, type FunctionStats } from "../dev/convex-local/usage";
import { api, internal } from "./_generated/api";
import type { Id } from "./_generated/dataModel";
import { COUNTS, shardOf } from "./healthCounts";
import { LIMITS } from "./healthProtocol";
import schema from "./schema";
import { MINUTE, NOW, SECOND, SECRET, beatToken, payload, result, setup, signed, sync, type T } from "./test.setup";

const N = 1000; // 999 planted, the 1,000th joins
const TOKEN = "5".repeat(64); // every planted instance's token
const CHECKS = Array.from({ length: 16 }, (_, i) => `panic-check-${String(i).padStart(2, "0")}`);
const MiB = 1024 * 1024;
const CLOUD = { documentsRead: 16_000, bytesRead: 8 * MiB, documentsWritten: 8_000, bytesWritten: 8 * MiB };
const name = (i: number) => `web-7c9f8d6b5-${String(i).padStart(4, "0")}`;
const figures: Record<string, FunctionStats> = {};

let t: T;
let meter: UsageMeter;
const beats: Record<string, Id<"sidecarHeartbeats">> = {};

/** One call, measured; held to the cloud's limits. */
async function measure<R>(label: string, call: () => Promise<R>): Promise<R> {
  meter.reset();
  const outcome = await meter.measure(label, call);
  if (!outcome.ok) throw outcome.error;
  // Counted under the function that touched the database (one per call here).
  const stats = Object.values(meter.report().functions).reduce((sum, s) => ({
    calls: sum.calls + s.calls,
    errors: sum.errors + s.errors,
    documentsRead: sum.documentsRead + s.documentsRead,
    bytesRead: sum.bytesRead + s.bytesRead,
    documentsWritten: sum.documentsWritten + s.documentsWritten,
    bytesWritten: sum.bytesWritten + s.bytesWritten,
  }));
  figures[label] = stats;
  expect(stats.documentsRead, label).toBeLessThanOrEqual(CLOUD.documentsRead);
  expect(stats.bytesRead, label).toBeLessThanOrEqual(CLOUD.bytesRead);
  expect(stats.documentsWritten, label).toBeLessThanOrEqual(CLOUD.documentsWritten);
  expect(stats.bytesWritten, label).toBeLessThanOrEqual(CLOUD.bytesWritten);
  return outcome.value;
}

beforeAll(async () => {
  vi.useFakeTimers({ toFake: ["Date"] });
  vi.setSystemTime(NOW);
  vi.stubEnv("HEALTH_SIDECAR_SECRET", SECRET);
  t = setup();
  installDatabaseObserver();
  meter = new UsageMeter(schema);
  // N counted instances failing the 16 checks, with a summary saying so, planted in batches
  // (a transaction of its own each, under the limits), and their counters.
  const summary = { ready: true, reasons: CHECKS.map((c) => `${c} is fail (shared outage)`), failing: CHECKS };
  for (let first = 0; first < N - 1; first += 37) {
    await t.run(async (ctx) => {
      for (let i = first; i < Math.min(first + 37, N - 1); i++) {
        const instance = name(i);
        const heartbeat = await ctx.db.insert("sidecarHeartbeats", {
          seenAt: NOW,
          expiresAt: NOW + 5 * MINUTE,
          liveUntil: NOW + 2 * MINUTE,
          ts: NOW - 1,
          tokenHash: beatToken(instance, TOKEN),
        });
        beats[instance] = heartbeat;
        await ctx.db.insert("sidecarInstances", { instance, version: "0.3.0", heartbeat, ...summary });
        await ctx.db.insert("sidecarMailbox", { instance, heartbeat, tokenHash: "0".repeat(16) });
        for (const check of CHECKS) await ctx.db.insert("sidecarFailing", { check, instance, until: NOW });
      }
    });
  }
  await t.run(async (ctx) => {
    const shards = new Map<number, number>();
    for (let i = 0; i < N - 1; i++) shards.set(shardOf(name(i), COUNTS.SHARDS), (shards.get(shardOf(name(i), COUNTS.SHARDS)) ?? 0) + 1);
    for (const key of ["live", ...CHECKS.map((c) => `failing:${c}`)]) {
      for (const [shard, value] of shards) await ctx.db.insert("sidecarCounters", { key, shard, value });
    }
  });
}, 120_000);

afterAll(() => {
  vi.useRealTimers();
  vi.unstubAllEnvs();
  const rows = Object.entries(figures).map(
    ([label, s]) =>
      `| ${label} | ${s.documentsRead} | ${(s.bytesRead / 1024).toFixed(1)} KiB | ${s.documentsWritten} | ${(s.bytesWritten / 1024).toFixed(1)} KiB |`,
  );
  console.log(
    ["| transaction (N = 1,000, 16 failing panic checks each) | docs read | read | docs written | written |", "| --- | --- | --- | --- | --- |", ...rows].join("\n"),
  );
});

describe(`at N = ${N} instances failing ${CHECKS.length} panic checks, every transaction stays under Convex cloud's limits`, () => {
  test("the recount (every counter, every verdict written: the first after the outage began)", async () => {
    const outcome = await measure("health:recount (all verdicts new)", () => t.mutation(internal.health.recount, {}));
    expect(outcome.changed).toBe(1 + CHECKS.length);
    const verdicts = await t.run((ctx) => ctx.db.query("sidecarVerdicts").collect());
    expect(verdicts.map((v) => [v.failing, v.live])).toEqual(CHECKS.map(() => [N - 1, N - 1]));
  });

  test("a failing sync of an instance with 16 failing checks reads its rows and the 16 verdicts only", async () => {
    vi.setSystemTime(NOW + 10 * SECOND);
    const instance = name(7);
    const body = payload({
      heartbeat: beats[instance],
      token: TOKEN,
      periodMs: 60_000,
      panic: { failing: CHECKS, holdMs: 30_000 },
    });
    const answer = await measure("health:sync (failing, 16 checks)", () => sync(t, signed(instance, body)));
    expect(answer.outages).toEqual(CHECKS.map((check) => ({ check, failing: N - 1, live: N - 1 })));
    expect(answer.live).toBe(N - 1);
    expect(figures["health:sync (failing, 16 checks)"].documentsRead).toBeLessThan(40);
  });

  test("a new instance joins already failing the 16 checks (hello), and another leaves with them", async () => {
    vi.setSystemTime(NOW + 11 * SECOND);
    const joining = signed("newcomer", payload({ hello: {}, periodMs: 60_000, panic: { failing: CHECKS, holdMs: 30_000 }, results: CHECKS.map((c) => result(c, { status: "fail" })) }));
    await measure("health:sync (hello, joining with 16 failing)", () => sync(t, joining));
    const leaving = signed(name(8), payload({ heartbeat: beats[name(8)], token: TOKEN, leaving: true }));
    await measure("health:sync (leaving with 16 failing)", () => sync(t, leaving));
  });

  test("a page of health:fleet (100 instances with 16-reason summaries)", async () => {
    const call = signed("cli", {}, { path: "health:fleet" });
    const page = await measure("health:fleet (one page)", () => t.query(api.health.fleet, call));
    expect(page.isDone).toBe(false);
  });

  test("drain --all (every counted instance: heartbeat, mailbox, audit row each)", async () => {
    vi.setSystemTime(NOW + 12 * SECOND);
    const body = { action: "drain", instances: null, reason: "kernel upgrade", by: "ops@bastion", forMs: null };
    const answer = await measure("health:drain (all)", () => t.mutation(api.health.drain, signed("cli", body, { path: "health:drain" })));
    expect(answer.instances.length).toBe(N - 1); // the 1,000th joined, one left
  }, 120_000);

  test("the recount after every instance died: it takes out UNCOUNT_PER_RECOUNT of them a run", async () => {
    vi.setSystemTime(NOW + 3 * MINUTE); // every planted liveUntil has passed
    const outcome = await measure("health:recount (taking out 10 dead)", () => t.mutation(internal.health.recount, {}));
    expect(outcome.more).toBe(true);
  }, 120_000);

  test("a purge run (PURGE_BATCH deletions at most)", async () => {
    vi.setSystemTime(NOW + 10 * MINUTE); // every planted instance expired
    const outcome = await measure("health:purgeExpired (one run)", () => t.mutation(internal.health.purgeExpired, {}));
    expect(outcome.deleted).toBeLessThanOrEqual(LIMITS.PURGE_BATCH + 2 * LIMITS.MAX_CHECKS);
  }, 120_000);
});
