/**
 * The stand-in's optimistic concurrency (occ.ts) and Convex cloud's transaction limits
 * (limits.ts), through HTTP with the test-only functions of testFunctions.ts. The model's clock
 * and each transaction's Convex duration are fixed here (options `now`, `duration`, `sleep`,
 * `random`), so that overlap is decided by the test, not by this machine's speed.
 */
import { ConvexHttpClient } from "convex/browser";
import { makeFunctionReference } from "convex/server";
import { afterEach, describe, expect, test } from "vitest";
import type { OccOptions } from "./occ";
import { startServer, type ConvexLocal } from "./server";
import { notes, testSchema } from "./testFunctions";

const ref = <K extends "query" | "mutation">(kind: K, name: string) => makeFunctionReference<K>(`notes:${name}`);
const DURATION_MS = 50;

/** A fake clock: attempts take their snapshot at `clock.ms`; sleeping advances it when `advance` is on. */
interface Clock {
  ms: number;
  advance: boolean;
  slept: number[];
}

let local: (ConvexLocal & { url: string }) | undefined;
const lines: string[] = [];

afterEach(() => {
  local?.server.close();
  local = undefined;
});

async function start(occ: OccOptions = {}, clock: Clock = { ms: 0, advance: true, slept: [] }) {
  local = await startServer(0, {
    functions: { notes },
    schema: testSchema,
    log: (line) => lines.push(line),
    occ: {
      now: () => clock.ms,
      duration: () => DURATION_MS,
      random: () => 0.5,
      sleep: async (ms) => {
        clock.slept.push(ms);
        if (clock.advance) clock.ms += ms;
      },
      ...occ,
    },
  });
  const client = new ConvexHttpClient(local.url, { skipConvexDeploymentUrlCheck: true });
  const id = await client.mutation(ref("mutation", "add"), { author: "alice", body: "n" });
  clock.ms += 1000; // the setup's commit is long over
  local.resetStats();
  return { client, id, clock, url: local.url };
}

const body = async (client: ConvexHttpClient, id: string) =>
  ((await client.query(ref("query", "get"), { id: id as never })) as { body: string }).body;

describe("optimistic concurrency", () => {
  test("two overlapping read-modify-writes of one document: the second conflicts, retries after Convex's backoff, both apply", async () => {
    const { client, id, clock } = await start();
    await Promise.all([client.mutation(ref("mutation", "bump"), { id }), client.mutation(ref("mutation", "bump"), { id })]);
    expect(await body(client, id)).toBe("n++");
    const { transactions } = local!.stats();
    expect(transactions).toMatchObject({ occ: "on", conflicts: 1, retries: 1, failedAfterRetries: 0 });
    expect(transactions.byFunction["notes:bump"]).toEqual({ conflicts: 1, retries: 1, failedAfterRetries: 0 });
    // Backoff::fail after 0 failures: min(100 ms x 2^0, 2 s) x jitter 0.5.
    expect(clock.slept).toEqual([50]);
  });

  test("a mutation that conflicts on every attempt fails after 4 retries with Convex's 503 OCC error", async () => {
    const clock: Clock = { ms: 0, advance: false, slept: [] };
    const { client, id, url } = await start({}, clock);
    // The first bump commits at 1000 + 50 in Convex's time; the clock stays at 1000: every retry overlaps it.
    const raw = (path: string) =>
      fetch(`${url}/api/mutation`, {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify({ path, args: { id }, format: "json" }),
      });
    const [first, second] = await Promise.all([raw("notes:bump"), raw("notes:bump")]);
    expect(await first.json()).toMatchObject({ status: "success" });
    expect(second.status).toBe(503);
    expect(await second.json()).toEqual({
      code: "OptimisticConcurrencyControlFailure",
      message:
        'Documents read from or written to the table "notes" changed while this mutation was being run and on every ' +
        `subsequent retry. Another call to this mutation changed the document with ID "${id}". See https://docs.convex.dev/error#1`,
    });
    expect(clock.slept).toEqual([50, 100, 200, 400]);
    expect(local!.stats().transactions).toMatchObject({ conflicts: 5, retries: 4, failedAfterRetries: 1 });
    expect(local!.stats().functions["notes:bump"]).toMatchObject({ calls: 2, errors: 1 });
    expect(await body(client, id)).toBe("n+");
  });

  test("another function's write is named as its writer", async () => {
    const clock: Clock = { ms: 0, advance: false, slept: [] };
    const { client } = await start({ maxRetries: 0 }, clock);
    const [, tally] = await Promise.allSettled([
      client.mutation(ref("mutation", "add"), { author: "alice", body: "2" }),
      client.mutation(ref("mutation", "tally"), { author: "alice" }),
    ]);
    expect(tally.status).toBe("rejected");
    expect(String((tally as PromiseRejectedResult).reason)).toContain('A call to \\"notes:add\\" changed the document with ID');
  });

  test("mutations that do not overlap in time never conflict, even on one document", async () => {
    const { client, id, clock } = await start();
    for (let i = 0; i < 5; i++) {
      await client.mutation(ref("mutation", "bump"), { id });
      clock.ms += DURATION_MS + 1;
    }
    expect(await body(client, id)).toBe("n+++++");
    expect(local!.stats().transactions).toMatchObject({ conflicts: 0, retries: 0 });
  });

  test("overlapping mutations on different documents, or inserts nobody read, never conflict", async () => {
    const { client, id, clock } = await start();
    const other = await client.mutation(ref("mutation", "add"), { author: "bob", body: "n" });
    clock.ms += 1000;
    await Promise.all([
      client.mutation(ref("mutation", "bump"), { id }),
      client.mutation(ref("mutation", "bump"), { id: other }),
      client.mutation(ref("mutation", "add"), { author: "carol", body: "x" }),
      client.mutation(ref("mutation", "tally"), { author: "dave" }),
    ]);
    expect(local!.stats().transactions).toMatchObject({ conflicts: 0 });
  });

  test("with occ off, overlapping conflicting mutations all commit at once", async () => {
    const { client, id } = await start({ enabled: false });
    await Promise.all([1, 2, 3].map(() => client.mutation(ref("mutation", "bump"), { id })));
    expect(await body(client, id)).toBe("n+++");
    expect(local!.stats().transactions).toMatchObject({ occ: "off", conflicts: 0 });
  });
});

describe("Convex cloud's transaction limits and the largest transaction", () => {
  test("8,000 documents written pass, 8,001 fail with the backend's text and write nothing", async () => {
    const { client } = await start({ enabled: false });
    await client.mutation(ref("mutation", "addMany"), { n: 8_000 });
    expect(local!.stats().transactions.largest.documentsWritten).toEqual({ value: 8_000, fn: "notes:addMany" });
    const error = await client.mutation(ref("mutation", "addMany"), { n: 8_001 }).catch((e: unknown) => e);
    expect(String(error)).toMatch(/Server Error/);
    expect(lines.some((l) => l.includes("Too many writes in a single function execution (limit: 8000)"))).toBe(true);
    expect(await client.query(ref("query", "readMany"), { author: "many", times: 1 })).toBe(8_000);
  }, 60_000);

  test("16,000 documents read pass, 16,001 fail with the backend's text", async () => {
    const { client } = await start({ enabled: false });
    await client.mutation(ref("mutation", "addMany"), { n: 4_000 });
    expect(await client.query(ref("query", "readMany"), { author: "many", times: 4 })).toBe(16_000);
    const largest = local!.stats().transactions.largest;
    expect(largest.documentsRead).toEqual({ value: 16_000, fn: "notes:readMany" });
    expect(largest.bytesRead.value).toBeGreaterThan(16_000 * 70);
    expect(largest.ms.value).toBeGreaterThan(0);
    await client.mutation(ref("mutation", "add"), { author: "many", body: "" });
    const error = await client.query(ref("query", "readMany"), { author: "many", times: 4 }).catch((e: unknown) => e);
    expect(String(error)).toMatch(/Server Error/);
    expect(
      lines.some((l) =>
        l.includes("Too many documents read in a single function execution (limit: 16000). Consider using smaller limits"),
      ),
    ).toBe(true);
  }, 60_000);

  test("/_dev/stats carries the counters; reset clears them", async () => {
    const { client, url } = await start();
    await client.query(ref("query", "scan"), {});
    const stats = await (await fetch(`${url}/_dev/stats`)).json();
    expect(stats.transactions).toMatchObject({ occ: "on", conflicts: 0, retries: 0, failedAfterRetries: 0, backgroundConflicts: 0 });
    expect(stats.transactions.largest.documentsRead).toEqual({ value: 1, fn: "notes:scan" });
    const reset = await (await fetch(`${url}/_dev/stats/reset`, { method: "POST" })).json();
    expect(reset.transactions.largest.documentsRead).toEqual({ value: 0, fn: "" });
  });
});
