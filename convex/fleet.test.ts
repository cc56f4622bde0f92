/**
 * The fleet additions to store protocol v1 (/research/fleet.md): the summary, shared-outage
 * counts (panic), shared checks, drains and their audit trail, the fleet listing, the purge of
 * what they leave behind, and what they cost.
 */
import { convexTest } from "convex-test";
import { afterEach, beforeEach, describe, expect, test, vi } from "vitest";
import { api, internal } from "./_generated/api";
import type { Id } from "./_generated/dataModel";
import { FLEET } from "./healthFleet";
import { FIELD_LIMITS, LIMITS } from "./healthProtocol";
import schema from "./schema";
import {
  HOUR,
  MINUTE,
  NOW,
  SECOND,
  OPERATOR_SECRET,
  SECRET,
  enroll,
  plantToken,
  hello,
  modules,
  payload,
  refusal,
  result,
  setup,
  signed,
  snapshot,
  sync,
  type Call,
  type T,
} from "./test.setup";

beforeEach(() => {
  vi.useFakeTimers();
  vi.setSystemTime(NOW);
  vi.stubEnv("HEALTH_SIDECAR_SECRET", SECRET);
});
afterEach(() => {
  vi.useRealTimers();
  vi.unstubAllEnvs();
});

const DAY = 24 * HOUR;
const HOLD = 25 * SECOND;

/** Registers each instance with a hello at the current time; returns their heartbeat ids. */
async function register(t: T, instances: string[], ttlMs = 5 * MINUTE): Promise<Record<string, string>> {
  const beats: Record<string, string> = {};
  for (const instance of instances) {
    beats[instance] = (await sync(t, signed(instance, payload({ ttlMs, hello: {} })))).heartbeat;
  }
  return beats;
}

/** A steady-state sync of `instance` with `extra` body keys. */
const steady = (t: T, beats: Record<string, string>, instance: string, extra: Record<string, unknown> = {}) =>
  sync(t, signed(instance, payload({ heartbeat: beats[instance], ...extra })));

/** A steady-state sync reporting the panic checks failing on `instance`. */
const panic = (t: T, beats: Record<string, string>, instance: string, failing: string[], holdMs = HOLD) =>
  steady(t, beats, instance, { panic: { failing, holdMs } });

const drainCall = (body: object | string, options: { path?: string } = {}) =>
  signed("cli", body, { path: "health:drain", ...options });
const drain = (t: T, body: object | string) => t.mutation(api.health.drain, drainCall(body));
const fleet = (t: T, options: { ts?: number } = {}) =>
  t.query(api.health.fleet, signed("cli", {}, { path: "health:fleet", ...options }));

const DRAIN = { action: "drain", instances: null, reason: "kernel upgrade", by: "ops@bastion", forMs: null };
const UNDRAIN = { action: "undrain", instances: null, reason: null, by: "ops@bastion", forMs: null };

const censusOf = async (t: T, check: string) => (await snapshot(t)).census.find((c) => c.check === check);

// ---------------------------------------------------------------------------------------------

describe("summary", () => {
  const summary = { ready: false, reasons: ["mastra is fail"], failing: ["mastra"] };

  test("is stored on the registry with hello and when a later sync sends it", async () => {
    const t = setup();
    const beats = { i1: (await sync(t, signed("i1", payload({ hello: {}, summary })))).heartbeat };
    expect((await snapshot(t)).instances).toEqual([expect.objectContaining({ instance: "i1", ...summary })]);
    const recovered = { ready: true, reasons: [], failing: [] };
    await steady(t, beats, "i1", { summary: recovered });
    expect((await snapshot(t)).instances).toEqual([expect.objectContaining({ instance: "i1", ...recovered })]);
    // Without summary, nothing changes.
    const before = await snapshot(t);
    await steady(t, beats, "i1");
    expect((await snapshot(t)).instances).toEqual(before.instances);
  });

  test("is written only when it changed: the same summary costs no registry write", async () => {
    // One document written per transaction at most: the heartbeat's patch.
    const tight = convexTest({ schema, modules, transactionLimits: { documentsWritten: 1 } });
    const heartbeat = await tight.run((ctx) =>
      ctx.db.insert("sidecarHeartbeats", { seenAt: NOW, expiresAt: NOW + HOUR, tokenHash: plantToken("i1") }),
    );
    await tight.run((ctx) =>
      ctx.db.insert("sidecarInstances", { instance: "i1", version: "0.2.0", heartbeat, ...summary }),
    );
    const beats = { i1: heartbeat };
    await expect(steady(tight, beats, "i1", { summary })).resolves.toMatchObject({ resend: false });
    await expect(sync(tight, signed("i1", payload({ hello: {}, summary })))).resolves.toMatchObject({ resend: false });
    // Each field counts: another reason, another failing list, another readiness is a second write.
    for (const changed of [
      { ...summary, reasons: ["mastra is warn"] },
      { ...summary, failing: [] },
      { ...summary, ready: true },
    ]) {
      await expect(steady(tight, beats, "i1", { summary: changed })).rejects.toThrow(/too many/i);
    }
  });

  test("a summary signed as another instance with i1's heartbeat is refused, and changes nothing", async () => {
    const t = setup();
    const beats = await register(t, ["i1"]);
    const before = await snapshot(t);
    const error = await refusal(sync(t, signed("ghost", payload({ heartbeat: beats.i1, summary }))));
    expect(error.data.code).toBe("unauthorized");
    expect(await snapshot(t)).toEqual(before);
  });
});

// ---------------------------------------------------------------------------------------------

describe("panic: failing rows and the census", () => {
  const five = ["i1", "i2", "i3", "i4", "i5"];

  test("rows are upserted, refreshed and deleted to match panic.failing", async () => {
    const t = setup();
    const beats = await register(t, ["i1"]);
    await panic(t, beats, "i1", ["a", "b"]);
    const first = (await snapshot(t)).failing;
    expect(first.map(({ check, instance, until }) => ({ check, instance, until }))).toEqual([
      { check: "a", instance: "i1", until: NOW + HOLD },
      { check: "b", instance: "i1", until: NOW + HOLD },
    ]);
    vi.setSystemTime(NOW + 5 * SECOND);
    const answer = await panic(t, beats, "i1", ["b", "c"], 40 * SECOND);
    expect(answer.outages.map((o) => o.check)).toEqual(["b", "c"]);
    const second = (await snapshot(t)).failing;
    expect(second).toEqual([
      { ...first[1], until: NOW + 5 * SECOND + 40 * SECOND }, // b: the same row, refreshed
      expect.objectContaining({ check: "c", instance: "i1", until: NOW + 45 * SECOND }),
    ]);
    await panic(t, beats, "i1", []);
    expect((await snapshot(t)).failing).toEqual([]);
  });

  test("an outage count is answered for every name listed, in the order listed", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2"]);
    await panic(t, beats, "i2", ["mastra"]);
    const answer = await panic(t, beats, "i1", ["zeta", "mastra", "convex"]);
    expect(answer.outages).toEqual([
      { check: "zeta", failing: 1, live: 2 },
      { check: "mastra", failing: 2, live: 2 },
      { check: "convex", failing: 1, live: 2 },
    ]);
  });

  test("five instances: the third to fail sees failing=3 of live=5; refreshing does not count twice", async () => {
    const t = setup();
    const beats = await register(t, five);
    const seen = [];
    for (const instance of ["i1", "i2", "i3"]) seen.push((await panic(t, beats, instance, ["mastra"])).outages);
    expect(seen).toEqual([
      [{ check: "mastra", failing: 1, live: 5 }],
      [{ check: "mastra", failing: 2, live: 5 }],
      [{ check: "mastra", failing: 3, live: 5 }],
    ]);
    vi.setSystemTime(NOW + 5 * SECOND);
    expect((await panic(t, beats, "i1", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 3, live: 5 }]);
    expect(await censusOf(t, "mastra")).toMatchObject({ failing: 3, live: 5, computedAt: NOW });
  });

  test("concurrent syncs count exactly (mutations serialize)", async () => {
    const t = setup();
    const beats = await register(t, five);
    const answers = await Promise.all(five.map((instance) => panic(t, beats, instance, ["mastra"])));
    expect(answers.map((a) => a.outages[0].failing).sort()).toEqual([1, 2, 3, 4, 5]);
    expect(answers.every((a) => a.outages[0].live === 5)).toBe(true);
    expect(await censusOf(t, "mastra")).toMatchObject({ failing: 5, live: 5 });
    // And as many recover at once: the count goes back to zero.
    await Promise.all(five.map((instance) => panic(t, beats, instance, [])));
    expect(await censusOf(t, "mastra")).toMatchObject({ failing: 0, live: 5 });
  });

  test("an instance that recovers decrements; one that fails again increments", async () => {
    const t = setup();
    const beats = await register(t, five);
    for (const instance of ["i1", "i2", "i3"]) await panic(t, beats, instance, ["mastra", "convex"]);
    const recovered = await panic(t, beats, "i2", ["convex"]); // mastra recovered on i2
    expect(recovered.outages).toEqual([{ check: "convex", failing: 3, live: 5 }]);
    expect(await censusOf(t, "mastra")).toMatchObject({ failing: 2 });
    expect((await panic(t, beats, "i3", [])).outages).toEqual([]);
    expect(await censusOf(t, "mastra")).toMatchObject({ failing: 1 });
    expect(await censusOf(t, "convex")).toMatchObject({ failing: 2 });
    expect((await panic(t, beats, "i2", ["mastra", "convex"])).outages).toEqual([
      { check: "mastra", failing: 2, live: 5 },
      { check: "convex", failing: 2, live: 5 },
    ]);
  });

  test("after 15 s the census is recounted, dropping a dead instance whose row expired", async () => {
    const t = setup();
    const beats = {
      ...(await register(t, ["i1", "i2", "i3", "i4"])),
      ...(await register(t, ["dead"], LIMITS.MIN_TTL_MS)),
    };
    await panic(t, beats, "i1", ["mastra"]);
    await panic(t, beats, "i2", ["mastra"]);
    // Then it dies: no more syncs. Its heartbeat expires at +10 s, its row at +5 s.
    await steady(t, beats, "dead", { ttlMs: LIMITS.MIN_TTL_MS, panic: { failing: ["mastra"], holdMs: 5 * SECOND } });
    // Within 15 s, the census counts on (its row expired at +5 s, its heartbeat at +10 s).
    vi.setSystemTime(NOW + 10 * SECOND);
    expect((await panic(t, beats, "i3", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 4, live: 5 }]);
    vi.setSystemTime(NOW + FLEET.CENSUS_MAX_AGE_MS);
    expect((await panic(t, beats, "i1", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 4, live: 5 }]);
    // Older than 15 s: recounted. i1, i2 (until +25 s), i3 and i4 fail; dead is neither live nor failing.
    vi.setSystemTime(NOW + FLEET.CENSUS_MAX_AGE_MS + 1);
    expect((await panic(t, beats, "i4", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 4, live: 4 }]);
    expect(await censusOf(t, "mastra")).toMatchObject({ computedAt: NOW + FLEET.CENSUS_MAX_AGE_MS + 1 });
    // i2's row expired at +25 s, after the recount, which counted it: revived, it is not counted twice.
    vi.setSystemTime(NOW + 30 * SECOND);
    expect((await panic(t, beats, "i2", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 4, live: 4 }]);
  });

  test("an instance that left (its last sync before it stopped) is out of the counts and the listing, and warm-starts", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2", "gone"]);
    await steady(t, beats, "gone", { results: [result("mastra")], leaving: true });
    vi.setSystemTime(NOW + FLEET.CENSUS_MAX_AGE_MS + 1);
    expect((await panic(t, beats, "i1", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 1, live: 2 }]);
    expect((await fleet(t)).instances.map((i) => i.instance)).toEqual(["i1", "i2"]);
    // Back (a restart): its hello still gets its results, and it counts again.
    const back = await sync(t, signed("gone", payload({ hello: { mastra: "fp-mastra" } })));
    expect(back.warm?.results.map((r) => r.check)).toEqual(["mastra"]);
    expect((await fleet(t)).instances.map((i) => i.instance)).toEqual(["gone", "i1", "i2"]);
  });

  test("instances that leave while failing take their rows with them; joins and leaves void the census", async () => {
    const t = setup();
    const old = await register(t, ["o1", "o2", "o3"]);
    for (const name of ["o1", "o2", "o3"]) await panic(t, old, name, ["mastra"]);
    expect((await panic(t, old, "o3", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 3, live: 3 }]);
    // A rolling deploy during the outage: the old ones stop (their last sync still lists the
    // failing check), new ones start, and one of them has a local fault.
    for (const name of ["o1", "o2", "o3"]) {
      await steady(t, old, name, { leaving: true, panic: { failing: ["mastra"], holdMs: HOLD } });
    }
    const fresh = await register(t, ["n1", "n2", "n3", "n4"]);
    expect((await panic(t, fresh, "n1", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 1, live: 4 }]);
    expect((await snapshot(t)).failing.map((row) => row.instance)).toEqual(["n1"]);
  });

  test("a census with more failing than live instances is recounted at once", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2"]);
    await panic(t, beats, "i1", ["mastra"]);
    await t.run(async (ctx) => {
      const census = await ctx.db.query("sidecarCensus").first();
      if (census) await ctx.db.patch("sidecarCensus", census._id, { failing: 5, live: 2 });
    });
    expect((await panic(t, beats, "i2", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 2, live: 2 }]);
  });

  test("leaving must be a boolean", async () => {
    const t = setup();
    const beats = await register(t, ["i1"]);
    const before = await snapshot(t);
    expect((await refusal(steady(t, beats, "i1", { leaving: "yes" }))).data.code).toBe("invalid_argument");
    expect(await snapshot(t)).toEqual(before);
  });

  test("a row that expired before the recount counts again when revived", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2"]);
    await panic(t, beats, "i1", ["mastra"], 1 * SECOND);
    vi.setSystemTime(NOW + 16 * SECOND);
    expect((await panic(t, beats, "i2", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 1, live: 2 }]);
    vi.setSystemTime(NOW + 17 * SECOND);
    expect((await panic(t, beats, "i1", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 2, live: 2 }]);
  });

  test("a row that expired after the recount is revived without counting twice", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2"]);
    await panic(t, beats, "i1", ["mastra"], 2 * SECOND);
    // i1's row (until +2 s) was counted by the recount at NOW; at +3 s it is expired but still counted.
    vi.setSystemTime(NOW + 3 * SECOND);
    expect((await panic(t, beats, "i1", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 1, live: 2 }]);
    expect((await panic(t, beats, "i2", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 2, live: 2 }]);
  });

  test("panic with nothing failing and no rows reads one empty index range and writes nothing more", async () => {
    const tight = convexTest({
      schema,
      modules,
      transactionLimits: {
        documentsRead: 2,
        databaseQueries: 2,
        documentsWritten: 1,
        bytesRead: 2 * 158,
        bytesWritten: 158,
      },
    });
    const id = await tight.run((ctx) =>
      ctx.db.insert("sidecarHeartbeats", { seenAt: NOW, expiresAt: NOW + HOUR, tokenHash: plantToken("i1") }),
    );
    const answer = await panic(tight, { i1: id }, "i1", []);
    expect(answer).toMatchObject({ resend: false, outages: [], shared: [], drain: null });
  });

  test("a failing sync with a fresh census reads a bounded number of documents, however many instances live", async () => {
    // The heartbeat's get and the patch's read, the census's read and the patch's read: 4 (a new
    // row), plus the row's read and its patch's read when it is refreshed: 5. Three index ranges.
    const limits = { documentsRead: 5, databaseQueries: 3 };
    const tight = convexTest({ schema, modules, transactionLimits: limits });
    const beats: Record<string, Id<"sidecarHeartbeats">> = {};
    await tight.run(async (ctx) => {
      for (let i = 0; i < 50; i++) beats[`i${i}`] = await enroll(ctx, `i${i}`, NOW + HOUR);
      await ctx.db.insert("sidecarCensus", { check: "mastra", failing: 20, live: 50, computedAt: NOW });
    });
    vi.setSystemTime(NOW + 10 * SECOND);
    expect((await panic(tight, beats, "i7", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 21, live: 50 }]);
    expect((await panic(tight, beats, "i7", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 21, live: 50 }]);
    expect((await panic(tight, beats, "i8", ["mastra"])).outages).toEqual([{ check: "mastra", failing: 22, live: 50 }]);
    // The same limits refuse a recount (a scan of the 50 heartbeats), which comes once the census is 15 s old.
    vi.setSystemTime(NOW + FLEET.CENSUS_MAX_AGE_MS + 1);
    await expect(panic(tight, beats, "i9", ["mastra"])).rejects.toThrow(/too many/i);
  });
});

// ---------------------------------------------------------------------------------------------

describe("clamps and the registration rate", () => {
  test("attack: a lease or hold beyond the clamp is cut to HOLD_CLAMP_MS (5 minutes)", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2"], LIMITS.TTL_CLAMP_MS);
    const shared = [{ check: "db", fingerprint: "f", leaseMs: HOUR, result: null }];
    await steady(t, beats, "i1", { shared, panic: { failing: ["mastra"], holdMs: HOUR } });
    const { shared: leases, failing } = await snapshot(t);
    expect(leases.map((l) => l.leaseUntil)).toEqual([NOW + FIELD_LIMITS.HOLD_CLAMP_MS]);
    expect(failing.map((f) => f.until)).toEqual([NOW + FIELD_LIMITS.HOLD_CLAMP_MS]);
    // Past the clamp, another instance takes the lease over.
    vi.setSystemTime(NOW + FIELD_LIMITS.HOLD_CLAMP_MS);
    const answer = await steady(t, beats, "i2", { shared });
    expect(answer.shared).toEqual([{ check: "db", holder: true, result: null }]);
  });

  test("attack: a burst of new names is rate-limited (`rate_limited`) and shows in fleet's joinsLastHour", async () => {
    const t = setup();
    let admitted = 0;
    let refused: { code: string; message: string } | null = null;
    for (let i = 0; i < LIMITS.JOINS_PER_MINUTE + 50 && refused === null; i++) {
      try {
        await sync(t, signed(`fake-${i}`, payload({ hello: {} })));
        admitted += 1;
      } catch (error) {
        refused = (error as { data: { code: string; message: string } }).data;
      }
    }
    expect(refused?.code).toBe("rate_limited");
    expect(refused?.message).toMatch(/^too many new instance names this minute \(about 200 a minute\): try again in \d+ s$/);
    expect(admitted).toBeLessThanOrEqual(LIMITS.JOINS_PER_MINUTE);
    const before = await snapshot(t);
    expect(before.instances).toHaveLength(admitted);
    expect((await fleet(t)).joinsLastHour).toBe(admitted);
    // A name already registered is no new name: its hello is not limited.
    await sync(t, signed("fake-0", payload({ hello: {} })));
    // The next minute admits again; an hour later the burst no longer shows.
    vi.setSystemTime(NOW + MINUTE);
    await sync(t, signed("late", payload({ hello: {} })));
    vi.setSystemTime(NOW + HOUR + MINUTE);
    expect((await fleet(t)).joinsLastHour).toBe(1);
  });
});

// ---------------------------------------------------------------------------------------------

describe("shared checks", () => {
  const entry = (overrides: Record<string, unknown> = {}) => ({
    check: "agent",
    fingerprint: "fp-agent",
    leaseMs: 30 * SECOND,
    result: null,
    ...overrides,
  });
  const probed = result("agent", { ageMs: 500, lastSuccessAgeMs: 500 });

  test("the first caller holds the lease; the others get holder=false and its result aged by the server's clock", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2"]);
    expect((await steady(t, beats, "i1", { shared: [entry()] })).shared).toEqual([
      { check: "agent", holder: true, result: null },
    ]);
    expect((await steady(t, beats, "i2", { shared: [entry()] })).shared).toEqual([
      { check: "agent", holder: false, result: null },
    ]);
    vi.setSystemTime(NOW + 5 * SECOND);
    expect((await steady(t, beats, "i1", { shared: [entry({ result: probed })] })).shared).toEqual([
      { check: "agent", holder: true, result: probed },
    ]);
    vi.setSystemTime(NOW + 15 * SECOND);
    // A non-holder's result is ignored; it gets the holder's, 10 s older.
    const other = result("agent", { status: "fail" });
    const aged = { ...probed, ageMs: 10_500, lastSuccessAgeMs: 10_500 };
    expect((await steady(t, beats, "i2", { shared: [entry({ result: other })] })).shared).toEqual([
      { check: "agent", holder: false, result: aged },
    ]);
    expect((await snapshot(t)).shared).toEqual([
      expect.objectContaining({
        check: "agent",
        fingerprint: "fp-agent",
        holder: "i1",
        leaseUntil: NOW + 35 * SECOND,
        result: { ...storedOf(probed, NOW + 5 * SECOND) },
      }),
    ]);
  });

  test("a holder that stops renewing is replaced once its lease ends; a result without probing keeps the old one", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2"]);
    await steady(t, beats, "i1", { shared: [entry({ result: probed })] });
    vi.setSystemTime(NOW + 30 * SECOND - 1);
    expect((await steady(t, beats, "i2", { shared: [entry()] })).shared[0].holder).toBe(false);
    vi.setSystemTime(NOW + 30 * SECOND); // leaseUntil <= now
    expect((await steady(t, beats, "i2", { shared: [entry({ leaseMs: 60 * SECOND })] })).shared).toEqual([
      { check: "agent", holder: true, result: { ...probed, ageMs: 30_500, lastSuccessAgeMs: 30_500 } },
    ]);
    expect((await snapshot(t)).shared).toEqual([
      expect.objectContaining({ holder: "i2", leaseUntil: NOW + 90 * SECOND }),
    ]);
    expect((await steady(t, beats, "i1", { shared: [entry()] })).shared[0].holder).toBe(false);
  });

  test("different fingerprints do not share; several checks are answered in the order sent", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2"]);
    await steady(t, beats, "i1", { shared: [entry({ result: probed })] });
    const answer = await steady(t, beats, "i2", {
      shared: [entry({ fingerprint: "fp-agent-v2" }), entry({ check: "search", fingerprint: "fp-search" })],
    });
    expect(answer.shared).toEqual([
      { check: "agent", holder: true, result: null },
      { check: "search", holder: true, result: null },
    ]);
    expect((await snapshot(t)).shared.map((s) => [s.check, s.fingerprint, s.holder])).toEqual([
      ["agent", "fp-agent", "i1"],
      ["agent", "fp-agent-v2", "i2"],
      ["search", "fp-search", "i2"],
    ]);
  });
});

function storedOf(wire: ReturnType<typeof result>, now: number) {
  const { check, fingerprint, ageMs, lastSuccessAgeMs, ...same } = wire;
  return { ...same, observedAt: now - ageMs, lastSuccessAt: now - lastSuccessAgeMs };
}

// ---------------------------------------------------------------------------------------------

describe("drain and undrain", () => {
  test("named instances: the mailbox delivers the drain until it ends, then the sync clears it", async () => {
    const t = setup();
    const long = { ttlMs: LIMITS.TTL_CLAMP_MS };
    const beats = await register(t, ["i1", "i2", "i3"], long.ttlMs);
    const answer = await drain(t, { ...DRAIN, instances: ["i2", "i1"], forMs: (10 * MINUTE) });
    expect(answer).toEqual({ instances: ["i1", "i2"] });
    vi.setSystemTime(NOW + 1200);
    const drained = {
      reason: "kernel upgrade",
      by: "ops@bastion",
      key: "operator",
      ageMs: 1200,
      remainingMs: (10 * MINUTE) - 1200,
    };
    expect((await steady(t, beats, "i1", long)).drain).toEqual(drained);
    expect((await steady(t, beats, "i3", long)).drain).toBeNull();
    // A restart's hello sees it too.
    expect((await sync(t, signed("i2", payload({ hello: {} })))).drain).toEqual(drained);

    vi.setSystemTime(NOW + (10 * MINUTE) - 1);
    expect(await steady(t, beats, "i1", long)).toMatchObject({ resend: false, drain: { remainingMs: 1 } });
    vi.setSystemTime(NOW + (10 * MINUTE));
    expect(await steady(t, beats, "i1", long)).toMatchObject({ resend: false, drain: null });
    const { heartbeats } = await snapshot(t);
    expect(heartbeats.find((h) => h._id === beats.i1)?.drain).toBeUndefined(); // cleared in the sync's patch
    expect(heartbeats.find((h) => h._id === beats.i2)?.drain).toEqual({
      reason: "kernel upgrade",
      by: "ops@bastion",
      key: "operator",
      at: NOW,
      until: NOW + (10 * MINUTE),
    });
  });

  test("all (null) drains every live instance, without end; undrain removes it", async () => {
    const t = setup();
    const beats = await register(t, ["i2", "i1"]);
    await t.run((ctx) => enroll(ctx, "expired", NOW));
    expect(await drain(t, DRAIN)).toEqual({ instances: ["i1", "i2"] });
    expect((await snapshot(t)).drainLog.map((row) => row.instance)).toEqual(["i1", "i2"]);
    vi.setSystemTime(NOW + 10 * SECOND);
    expect((await steady(t, beats, "i2")).drain).toEqual({
      reason: "kernel upgrade",
      by: "ops@bastion",
      key: "operator",
      ageMs: 10 * SECOND,
      remainingMs: null,
    });
    expect(await drain(t, { ...UNDRAIN, instances: ["i2"] })).toEqual({ instances: ["i2"] });
    expect((await steady(t, beats, "i2")).drain).toBeNull();
    expect((await steady(t, beats, "i1")).drain).not.toBeNull();
    expect(await drain(t, UNDRAIN)).toEqual({ instances: ["i1", "i2"] });
    expect((await steady(t, beats, "i1")).drain).toBeNull();
    expect((await snapshot(t)).heartbeats.every((h) => h.drain === undefined)).toBe(true);
  });

  test("every drain and undrain leaves one sidecarDrainLog row per instance", async () => {
    const t = setup();
    await register(t, ["i1", "i2"]);
    await drain(t, { ...DRAIN, instances: ["i2"], forMs: 10 * MINUTE });
    vi.setSystemTime(NOW + SECOND);
    await drain(t, DRAIN);
    vi.setSystemTime(NOW + 2 * SECOND);
    await drain(t, { ...UNDRAIN, instances: ["i1"] });
    await drain(t, { ...UNDRAIN, instances: ["i1"] }); // not drained any more: still logged
    const log = (await snapshot(t)).drainLog.map(({ _id, _creationTime, ...row }) => row);
    const entry = { reason: "kernel upgrade", by: "ops@bastion", key: "operator" };
    const undrained = { reason: null, by: "ops@bastion", key: "operator", at: NOW + 2 * SECOND, until: null };
    expect(log).toEqual([
      { instance: "i2", action: "drain", ...entry, at: NOW, until: NOW + 10 * MINUTE },
      { instance: "i1", action: "drain", ...entry, at: NOW + SECOND, until: null },
      { instance: "i2", action: "drain", ...entry, at: NOW + SECOND, until: null },
      { instance: "i1", action: "undrain", ...undrained },
      { instance: "i1", action: "undrain", ...undrained },
    ]);
  });

  test("an unknown or expired instance is refused by name, and nothing changes", async () => {
    const t = setup();
    await register(t, ["i1"]);
    await t.run((ctx) => enroll(ctx, "expired", NOW));
    await drain(t, { ...DRAIN, instances: ["i1"] });
    const before = await snapshot(t);
    for (const instances of [["i1", "nope"], ["expired"]]) {
      const error = await refusal(drain(t, { ...DRAIN, instances }));
      expect(error.data).toEqual({
        code: "invalid_argument",
        message: `unknown instance: ${instances.at(-1)} (not live in this deployment)`,
      });
      expect((await refusal(drain(t, { ...UNDRAIN, instances }))).data.code).toBe("invalid_argument");
    }
    expect(await snapshot(t)).toEqual(before);
  });

  test("a drain of all with no live instance drains nothing", async () => {
    const t = setup();
    expect(await drain(t, DRAIN)).toEqual({ instances: [] });
    expect((await snapshot(t)).drainLog).toEqual([]);
  });

  test("the mailbox costs a drained instance's steady sync no extra read", async () => {
    const tight = convexTest({ schema, modules, transactionLimits: { documentsRead: 2, databaseQueries: 1 } });
    const heartbeat = await tight.run((ctx) =>
      ctx.db.insert("sidecarHeartbeats", {
        seenAt: NOW,
        expiresAt: NOW + HOUR,
        tokenHash: plantToken("i1"),
        drain: { reason: "r", by: "b", key: "operator", at: NOW, until: null },
      }),
    );
    expect((await steady(tight, { i1: heartbeat }, "i1")).drain).toEqual({
      reason: "r",
      by: "b",
      key: "operator",
      ageMs: 0,
      remainingMs: null,
    });
  });
});

// ---------------------------------------------------------------------------------------------

describe("fleet", () => {
  test("lists the live instances by name with summary and drain, and the outages of the last minute", async () => {
    const t = setup();
    const summary = { ready: false, reasons: ["mastra is fail"], failing: ["mastra"] };
    await sync(t, signed("web-2", payload({ hello: {}, summary })));
    await sync(t, signed("old", payload({ hello: {}, ttlMs: LIMITS.MIN_TTL_MS })));
    const beats = await register(t, ["web-1"]);
    await drain(t, { ...DRAIN, instances: ["web-1"], forMs: HOUR });
    await panic(t, beats, "web-1", ["mastra"]);
    await t.run(async (ctx) => {
      // At the query's time (+20 s), one computed 60 s before (listed) and one 60.001 s before (not).
      await ctx.db.insert("sidecarCensus", { check: "agent", failing: 2, live: 3, computedAt: NOW - 40 * SECOND });
      await ctx.db.insert("sidecarCensus", { check: "convex", failing: 1, live: 3, computedAt: NOW - 40 * SECOND - 1 });
    });
    vi.setSystemTime(NOW + 20 * SECOND);
    expect(await fleet(t)).toEqual({
      now: NOW + 20 * SECOND,
      instances: [
        {
          instance: "web-1",
          version: "0.2.0",
          ready: null,
          reasons: [],
          failing: [],
          seenAgeMs: 20 * SECOND,
          drain: {
            reason: "kernel upgrade",
            by: "ops@bastion",
            key: "operator",
            ageMs: 20 * SECOND,
            remainingMs: HOUR - 20 * SECOND,
          },
        },
        { instance: "web-2", version: "0.2.0", ...summary, seenAgeMs: 20 * SECOND, drain: null },
      ],
      outages: [
        { check: "agent", failing: 2, live: 3, ageMs: 60 * SECOND },
        { check: "mastra", failing: 1, live: 3, ageMs: 20 * SECOND },
      ],
      joinsLastHour: 3,
    });
  });

  test("takes its time from the verified ts, not the clock", async () => {
    const t = setup();
    await register(t, ["web-1"]);
    const asOf = NOW + 5 * MINUTE; // the heartbeat expires then
    vi.setSystemTime(asOf - 30 * SECOND);
    expect((await fleet(t, { ts: asOf - 1 })).instances.map((i) => i.seenAgeMs)).toEqual([5 * MINUTE - 1]);
    expect(await fleet(t, { ts: asOf })).toEqual({ now: asOf, instances: [], outages: [], joinsLastHour: 1 });
    // A ts before the last sync gives an age of 0, never a negative one.
    vi.setSystemTime(NOW);
    expect((await fleet(t, { ts: NOW - 30 * SECOND })).instances[0].seenAgeMs).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------

describe("signatures are per function", () => {
  const pathOf = { sync: "health:sync", drain: "health:drain", fleet: "health:fleet" } as const;
  type Fn = keyof typeof pathOf;
  const bodyOf: Record<Fn, object> = {
    sync: payload({ hello: {} }),
    drain: { ...DRAIN, instances: ["i1"] },
    fleet: {},
  };
  const callOf = (t: T, fn: Fn, call: Call) =>
    fn === "sync"
      ? t.mutation(api.health.sync, call)
      : fn === "drain"
        ? t.mutation(api.health.drain, call)
        : t.query(api.health.fleet, call);

  const pairs = (Object.keys(pathOf) as Fn[]).flatMap((fn) =>
    (Object.keys(pathOf) as Fn[]).filter((other) => other !== fn).map((other) => [fn, other] as const),
  );

  test.each(pairs)("%s signed as %s is unauthorized, and changes nothing", async (fn, signedAs) => {
    const t = setup();
    await register(t, ["i1"]);
    const before = await snapshot(t);
    const call = signed("i1", bodyOf[fn], { path: pathOf[signedAs] });
    expect((await refusal(callOf(t, fn, call))).data.code).toBe("unauthorized");
    expect(await snapshot(t)).toEqual(before);
    // Signed for itself, the same call is accepted.
    await callOf(t, fn, signed("i1", bodyOf[fn], { path: pathOf[fn] }));
  });

  test("drain and fleet refuse a wrong secret and an old ts like sync", async () => {
    const t = setup();
    await register(t, ["i1"]);
    const wrong = signed("cli", { ...DRAIN }, { path: "health:drain", secret: "nope" });
    expect((await refusal(t.mutation(api.health.drain, wrong))).data.code).toBe("unauthorized");
    const old = signed("cli", {}, { path: "health:fleet", ts: NOW - 31 * SECOND });
    const skew = await refusal(t.query(api.health.fleet, old));
    expect(skew.data).toEqual({
      code: "clock_skew",
      message: "timestamp 31 s from the deployment's clock (at most 30 s): check the sidecar's clock",
    });
  });

  test("attack: drain and fleet signed with the fleet key are refused: they take the operator key only", async () => {
    const t = setup();
    await register(t, ["i1"]);
    const before = await snapshot(t);
    const forged = signed("i1", { ...DRAIN, by: "security-team@bastion", forMs: 30 * DAY }, {
      path: "health:drain",
      secret: SECRET,
    });
    expect((await refusal(t.mutation(api.health.drain, forged))).data).toEqual({
      code: "unauthorized",
      message:
        "bad signature: signed with the fleet key (HEALTH_SIDECAR_SECRET); drain and fleet need the operator key (HEALTH_SIDECAR_OPERATOR_SECRET)",
    });
    const listing = signed("i1", {}, { path: "health:fleet", secret: SECRET });
    expect((await refusal(t.query(api.health.fleet, listing))).data.code).toBe("unauthorized");
    // A deployment without the operator key refuses them all, whatever signed them.
    vi.stubEnv("HEALTH_SIDECAR_OPERATOR_SECRET", undefined);
    expect((await refusal(t.mutation(api.health.drain, drainCall(DRAIN)))).data).toEqual({
      code: "unauthorized",
      message: "bad signature: HEALTH_SIDECAR_OPERATOR_SECRET is not set on the deployment",
    });
    expect(await snapshot(t)).toEqual(before);
    // And the operator key is no fleet key: a sync signed with it is refused.
    vi.stubEnv("HEALTH_SIDECAR_OPERATOR_SECRET", OPERATOR_SECRET);
    const sync1 = signed("i1", payload({ hello: {} }), { secret: OPERATOR_SECRET });
    expect((await refusal(sync(t, sync1))).data.code).toBe("unauthorized");
  });

  test("attack: a replayed drain or undrain (the same nonce) is refused `replayed` and changes nothing", async () => {
    const t = setup();
    await register(t, ["i1", "i2"]);
    const drainAll = drainCall(DRAIN);
    await t.mutation(api.health.drain, drainAll);
    const undrainAll = drainCall(UNDRAIN);
    await t.mutation(api.health.drain, undrainAll);
    const before = await snapshot(t);
    vi.setSystemTime(NOW + 20 * SECOND); // inside the window
    for (const replay of [drainAll, undrainAll]) {
      expect((await refusal(t.mutation(api.health.drain, replay))).data).toEqual({
        code: "replayed",
        message: "this drain was accepted before (its nonce is spent): a replay",
      });
    }
    expect(await snapshot(t)).toEqual(before);
    // Past the window, the timestamp refuses it.
    vi.setSystemTime(NOW + 31 * SECOND);
    expect((await refusal(t.mutation(api.health.drain, drainAll))).data.code).toBe("clock_skew");
    // A nonce is 32 lowercase hex, required.
    const { nonce: _, ...bare } = JSON.parse(drainCall(DRAIN).body) as Record<string, unknown>;
    for (const body of [bare, { ...bare, nonce: "X".repeat(32) }, { ...bare, nonce: "ab" }]) {
      const call = signed("cli", JSON.stringify(body), { path: "health:drain" });
      expect((await refusal(t.mutation(api.health.drain, call))).data.code).toBe("invalid_argument");
    }
  });
});

// ---------------------------------------------------------------------------------------------

describe("bad inputs of the fleet keys are refused with invalid_argument, changing nothing", () => {
  const many = (n: number, prefix = "c") => Array.from({ length: n }, (_, i) => `${prefix}-${i}`);
  const summary = { ready: true, reasons: [], failing: [] };
  const panicBody = { failing: ["mastra"], holdMs: HOLD };
  const share = (overrides: Record<string, unknown> = {}) => ({
    check: "agent",
    fingerprint: "fp-agent",
    leaseMs: 30 * SECOND,
    result: null,
    ...overrides,
  });
  const syncCases: Record<string, Record<string, unknown>> = {
    "summary an array": { summary: [] },
    "summary with an unknown key": { summary: { ...summary, status: "ok" } },
    "summary without ready": { summary: { reasons: [], failing: [] } },
    "summary.ready a string": { summary: { ...summary, ready: "yes" } },
    "summary.ready null": { summary: { ...summary, ready: null } },
    "summary.reasons a string": { summary: { ...summary, reasons: "down" } },
    "21 summary reasons": { summary: { ...summary, reasons: many(21) } },
    "a summary reason of 301 units": { summary: { ...summary, reasons: ["r".repeat(301)] } },
    "a summary reason that is a number": { summary: { ...summary, reasons: [1] } },
    "201 summary.failing names": { summary: { ...summary, failing: many(201) } },
    "an empty summary.failing name": { summary: { ...summary, failing: [""] } },
    "a summary.failing name of 65": { summary: { ...summary, failing: ["c".repeat(65)] } },
    "a repeated summary.failing name": { summary: { ...summary, failing: ["a", "a"] } },
    "panic an array": { panic: [] },
    "panic with an unknown key": { panic: { ...panicBody, check: "x" } },
    "panic without holdMs": { panic: { failing: [] } },
    "panic without failing": { panic: { holdMs: HOLD } },
    "panic.holdMs under 1 s": { panic: { ...panicBody, holdMs: 999 } },
    "panic.holdMs over an hour": { panic: { ...panicBody, holdMs: 3_600_001 } },
    "panic.holdMs a string": { panic: { ...panicBody, holdMs: "25000" } },
    "panic.failing an object": { panic: { ...panicBody, failing: { mastra: true } } },
    "a repeated panic.failing name": { panic: { ...panicBody, failing: ["mastra", "convex", "mastra"] } },
    "201 panic.failing names": { panic: { ...panicBody, failing: many(201) } },
    "an empty panic.failing name": { panic: { ...panicBody, failing: [""] } },
    "a panic.failing name of 65": { panic: { ...panicBody, failing: ["c".repeat(65)] } },
    "shared an object": { shared: { agent: share() } },
    "a shared entry that is a string": { shared: ["agent"] },
    "a shared entry with an unknown key": { shared: [share({ holder: true })] },
    "a shared entry without leaseMs": { shared: [{ check: "agent", fingerprint: "fp" }] },
    "a shared entry without fingerprint": { shared: [{ check: "agent", leaseMs: 30_000 }] },
    "shared leaseMs under 1 s": { shared: [share({ leaseMs: 999 })] },
    "shared leaseMs over an hour": { shared: [share({ leaseMs: 3_600_001 })] },
    "shared leaseMs a string": { shared: [share({ leaseMs: "30s" })] },
    "an empty shared check": { shared: [share({ check: "" })] },
    "a shared check of 65": { shared: [share({ check: "c".repeat(65) })] },
    "an empty shared fingerprint": { shared: [share({ fingerprint: "" })] },
    "a shared fingerprint of 65": { shared: [share({ fingerprint: "f".repeat(65) })] },
    "a repeated shared check": { shared: [share(), share({ fingerprint: "other" })] },
    "201 shared entries": { shared: many(201).map((check) => share({ check })) },
    "a shared result that is a string": { shared: [share({ result: "pass" })] },
    "a shared result of another check": {
      shared: [share({ result: result("other", { fingerprint: "fp-agent" }) })],
    },
    "a shared result of another fingerprint": {
      shared: [share({ result: result("agent", { fingerprint: "fp-other" }) })],
    },
    "a shared result with a bad status": {
      shared: [share({ result: result("agent", { fingerprint: "fp-agent", status: "ok" }) })],
    },
    "a shared result from the future": {
      shared: [share({ result: result("agent", { fingerprint: "fp-agent", ageMs: -1 }) })],
    },
  };
  const drainCases: Record<string, object | string> = {
    "a body that is not JSON": "{action: drain}",
    "a body that is an array": [],
    "an unknown key": { ...DRAIN, all: true },
    "no forMs": { action: "drain", instances: null, reason: "r", by: "b" },
    "no by": { action: "drain", instances: null, reason: "r", forMs: null },
    "no instances": { action: "drain", reason: "r", by: "b", forMs: null },
    "action pause": { ...DRAIN, action: "pause" },
    "action null": { ...DRAIN, action: null },
    "instances empty": { ...DRAIN, instances: [] },
    "instances a string": { ...DRAIN, instances: "i1" },
    "a repeated instance": { ...DRAIN, instances: ["i1", "i1"] },
    "an empty instance name": { ...DRAIN, instances: [""] },
    "an instance name of 201": { ...DRAIN, instances: ["i".repeat(201)] },
    "1001 instances": { ...DRAIN, instances: many(1001, "i") },
    "a drain without reason": { ...DRAIN, reason: null },
    "a drain with an empty reason": { ...DRAIN, reason: "" },
    "a drain reason of 301": { ...DRAIN, reason: "r".repeat(301) },
    "a drain reason that is a number": { ...DRAIN, reason: 5 },
    "an undrain with a reason": { ...UNDRAIN, reason: "done" },
    "an undrain with forMs": { ...UNDRAIN, forMs: HOUR },
    "forMs under 1 s": { ...DRAIN, forMs: 999 },
    "forMs over 30 days": { ...DRAIN, forMs: 30 * DAY + 1 },
    "forMs a string": { ...DRAIN, forMs: "1h" },
    "an empty by": { ...DRAIN, by: "" },
    "a by of 201": { ...DRAIN, by: "b".repeat(201) },
    "by null": { ...DRAIN, by: null },
  };
  const fleetCases: Record<string, string> = {
    "a key": '{"instances":true}',
    "an array": "[]",
    null: "null",
    "not JSON": "fleet",
  };

  async function seededFleet(): Promise<{ t: T; before: Awaited<ReturnType<typeof snapshot>> }> {
    const t = setup();
    const beats = await register(t, ["i1", "i2"]);
    await panic(t, beats, "i2", ["mastra"]);
    await steady(t, beats, "i2", { shared: [share()] });
    await drain(t, { ...DRAIN, instances: ["i2"] });
    return { t, before: await snapshot(t) };
  }

  test.each(Object.entries(syncCases))("sync: %s", async (_, extra) => {
    const { t, before } = await seededFleet();
    const heartbeat = before.instances.find((i) => i.instance === "i1")!.heartbeat;
    const error = await refusal(sync(t, signed("i1", payload({ heartbeat, ...extra }))));
    expect(error.data.code).toBe("invalid_argument");
    expect(error.data.message).toMatch(/^body\.(summary|panic|shared)/);
    expect(await snapshot(t)).toEqual(before);
  });

  test.each(Object.entries(drainCases))("drain: %s", async (_, body) => {
    const { t, before } = await seededFleet();
    const error = await refusal(drain(t, body));
    expect(error.data.code).toBe("invalid_argument");
    expect(error.data.message).toMatch(/^body/);
    expect(await snapshot(t)).toEqual(before);
  });

  test.each(Object.entries(fleetCases))("fleet: %s", async (_, body) => {
    const { t } = await seededFleet();
    const error = await refusal(t.query(api.health.fleet, signed("cli", body, { path: "health:fleet" })));
    expect(error.data.code).toBe("invalid_argument");
  });

  test("the bounds themselves are accepted", async () => {
    const t = setup();
    const beats = await register(t, ["i1"]);
    const names = many(LIMITS.MAX_CHECKS).map((c) => c.padEnd(FIELD_LIMITS.NAME, "x"));
    const answer = await steady(t, beats, "i1", {
      summary: { ready: false, reasons: Array(20).fill("r".repeat(300)), failing: names },
      panic: { failing: names, holdMs: FIELD_LIMITS.MAX_HOLD_MS },
      shared: [share({ leaseMs: FIELD_LIMITS.MIN_HOLD_MS }), share({ check: "b", leaseMs: FIELD_LIMITS.MAX_HOLD_MS })],
    });
    expect(answer.outages).toHaveLength(LIMITS.MAX_CHECKS);
    expect(answer.shared).toHaveLength(2);
    await expect(
      drain(t, { ...DRAIN, instances: ["i1"], reason: "r".repeat(300), by: "b".repeat(200), forMs: 30 * DAY }),
    ).resolves.toEqual({ instances: ["i1"] });
    await expect(drain(t, { ...DRAIN, instances: ["i1"], forMs: 1000 })).resolves.toEqual({ instances: ["i1"] });
  });
});

// ---------------------------------------------------------------------------------------------

describe("purgeExpired and the fleet tables", () => {
  test("deletes the failing rows of purged instances, stale failing, census and shared rows; never the drain log", async () => {
    const t = setup();
    const beats = await register(t, ["gone", "live"], LIMITS.MIN_TTL_MS);
    await panic(t, beats, "gone", ["mastra", "convex"]); // two failing rows, two census rows
    await drain(t, { ...DRAIN, instances: ["gone"] });
    const later = NOW + DAY + 2 * HOUR;
    await t.run(async (ctx) => {
      // live's rows: one expired over an hour before the purge (deleted), one 30 minutes before (kept).
      await ctx.db.insert("sidecarFailing", { check: "agent", instance: "live", until: NOW + 10 * SECOND });
      await ctx.db.insert("sidecarFailing", { check: "mastra", instance: "live", until: later - 30 * MINUTE });
      await ctx.db.insert("sidecarCensus", { check: "old", failing: 1, live: 2, computedAt: NOW - DAY });
      await ctx.db.insert("sidecarShared", {
        check: "old",
        fingerprint: "f",
        holder: "gone",
        leaseUntil: NOW,
        result: null,
      });
      await ctx.db.insert("sidecarShared", {
        check: "new",
        fingerprint: "f",
        holder: "live",
        leaseUntil: later,
        result: null,
      });
    });
    vi.setSystemTime(later);
    await register(t, ["live"]); // live again; gone expired a day ago
    const before = await snapshot(t);
    // gone: 2 failing rows, its registry document and heartbeat; live's stale row; 3 census rows; 1 lease.
    // Besides: the drain's spent nonce, and the join buckets over two hours old.
    const spent = before.nonces.length + before.joins.length;
    expect(before.nonces).toHaveLength(1);
    expect(await t.mutation(internal.health.purgeExpired, {})).toEqual({
      deleted: 4 + 1 + 3 + 1 + spent,
      more: false,
    });
    const after = await snapshot(t);
    expect(after.instances.map((i) => i.instance)).toEqual(["live"]);
    expect(after.failing.map((r) => [r.check, r.instance])).toEqual([["mastra", "live"]]);
    expect(after.census).toEqual([]);
    expect(after.shared.map((r) => r.check)).toEqual(["new"]);
    expect(after.drainLog).toEqual(before.drainLog);
    expect(after.drainLog).toHaveLength(1);
    expect([after.nonces, after.joins]).toEqual([[], []]);
  });

  test("an expired instance's failing rows go with it, however long they would still count", async () => {
    const t = setup();
    const beats = await register(t, ["gone", "live"]);
    const failing = { failing: ["mastra"], holdMs: FIELD_LIMITS.MAX_HOLD_MS };
    await steady(t, beats, "gone", { ttlMs: LIMITS.MIN_TTL_MS, panic: failing });
    await steady(t, beats, "live", { panic: failing });
    vi.setSystemTime(NOW + MINUTE);
    // gone: its failing row, its registry document and heartbeat.
    expect(await t.mutation(internal.health.purgeExpired, {})).toEqual({ deleted: 3, more: false });
    const after = await snapshot(t);
    expect(after.failing.map((r) => r.instance)).toEqual(["live"]);
    expect(after.census).toHaveLength(1);
  });

  test("keeps what is recent: failing rows expired under an hour, census rows and leases under a day old", async () => {
    const t = setup();
    await t.run(async (ctx) => {
      await enroll(ctx, "live", NOW + HOUR);
      await ctx.db.insert("sidecarFailing", { check: "a", instance: "live", until: NOW - HOUR });
      await ctx.db.insert("sidecarFailing", { check: "a", instance: "x", until: NOW - HOUR + 1 });
      await ctx.db.insert("sidecarFailing", { check: "b", instance: "live", until: NOW - 2 * HOUR });
      await ctx.db.insert("sidecarFailing", { check: "c", instance: "live", until: NOW });
      await ctx.db.insert("sidecarCensus", { check: "a", failing: 1, live: 1, computedAt: NOW - DAY });
      await ctx.db.insert("sidecarCensus", { check: "b", failing: 1, live: 1, computedAt: NOW - DAY + 1 });
      await ctx.db.insert("sidecarShared", {
        check: "a",
        fingerprint: "f",
        holder: "x",
        leaseUntil: NOW - DAY,
        result: null,
      });
      await ctx.db.insert("sidecarShared", {
        check: "b",
        fingerprint: "f",
        holder: "x",
        leaseUntil: NOW - DAY + 1,
        result: null,
      });
      await ctx.db.insert("sidecarDrainLog", {
        instance: "x",
        action: "undrain",
        reason: null,
        by: "b",
        at: 0,
        until: null,
      });
    });
    expect(await t.mutation(internal.health.purgeExpired, {})).toEqual({ deleted: 4, more: false });
    const after = await snapshot(t);
    expect(after.failing.map((r) => [r.check, r.instance])).toEqual([
      ["a", "x"],
      ["c", "live"],
    ]);
    expect(after.census.map((c) => c.check)).toEqual(["b"]);
    expect(after.shared.map((s) => s.check)).toEqual(["b"]);
    expect(after.drainLog).toHaveLength(1);
  });

  test("the fleet sweep shares the run's budget and reschedules when it runs out", async () => {
    const t = setup();
    await t.run(async (ctx) => {
      for (let i = 0; i < LIMITS.PURGE_BATCH + 10; i++) {
        await ctx.db.insert("sidecarFailing", { check: `c${i % 7}`, instance: `i${i}`, until: NOW - 2 * HOUR });
      }
    });
    expect(await t.mutation(internal.health.purgeExpired, {})).toEqual({ deleted: LIMITS.PURGE_BATCH, more: true });
    await t.finishAllScheduledFunctions(vi.runAllTimers);
    expect((await snapshot(t)).failing).toEqual([]);
  });
});
