/**
 * The fleet additions to store protocol v1 (/research/fleet.md): the summary, shared-outage
 * counts (panic), shared checks, drains and their audit trail, the fleet listing, the purge of
 * what they leave behind, and what they cost.
 */
import type { WithoutSystemFields } from "convex/server";
import { describe, expect, test, vi } from "vitest";
import { api, internal } from "./_generated/api";
import type { Doc, Id } from "./_generated/dataModel";
import { COUNTS } from "./healthCounts";
import { FLEET } from "./healthFleet";
import { FIELD_LIMITS, LIMITS } from "./healthProtocol";
import {
  atNow,
  HOUR,
  MINUTE,
  NOW,
  SECOND,
  OPERATOR_SECRET,
  SECRET,
  enroll,
  plantToken,
  storedRow,
  hello,
  payload,
  refusal,
  result,
  setup,
  signed,
  snapshot,
  sync,
  tokenOf,
  type Call,
  type T,
} from "./test.setup";

atNow();

const DAY = 24 * HOUR;
const HOLD = 25 * SECOND;

/** A heartbeat of `instance` live for the next hour, as a hello at NOW leaves it (its token kept for `signed`). */
const liveHeartbeat = (t: T, instance: string, extra: Partial<WithoutSystemFields<Doc<"sidecarHeartbeats">>> = {}) =>
  t.run((ctx) =>
    ctx.db.insert("sidecarHeartbeats", {
      seenAt: NOW,
      expiresAt: NOW + HOUR,
      liveUntil: NOW + HOUR,
      tokenHash: plantToken(instance),
      ...extra,
    }),
  );

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
const fleet = (t: T, { body = {}, ...options }: { ts?: number; body?: object } = {}) =>
  t.query(api.health.fleet, signed("cli", body, { path: "health:fleet", ...options }));

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
    const tight = setup({ documentsWritten: 1 });
    const heartbeat = await liveHeartbeat(tight, "i1");
    await tight.run((ctx) =>
      ctx.db.insert("sidecarInstances", { instance: "i1", version: "0.2.0", heartbeat, ...summary }),
    );
    const beats = { i1: heartbeat };
    await expect(steady(tight, beats, "i1", { summary })).resolves.toMatchObject({ resend: false });
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

describe("counting: failing rows, sharded counters, the recount, liveness", () => {
  /** Runs the scheduled recounts (and whatever else is scheduled), the clock moving with them. */
  const settle = (t: T) => t.finishAllScheduledFunctions(vi.runAllTimers);
  const verdicts = async (t: T) =>
    Object.fromEntries((await snapshot(t)).verdicts.map((v) => [v.check, [v.failing, v.live]]));
  const counterSum = async (t: T, key: string) =>
    (await snapshot(t)).counters.filter((c) => c.key === key).reduce((sum, c) => sum + c.value, 0);

  test("rows are inserted, kept and deleted to match panic.failing; a refresh writes no row", async () => {
    const t = setup();
    const beats = await register(t, ["i1"]);
    await panic(t, beats, "i1", ["mastra", "convex"]);
    const rows = (await snapshot(t)).failing;
    expect(rows.map((r) => r.check).sort()).toEqual(["convex", "mastra"]);
    await panic(t, beats, "i1", ["convex", "mastra"]);
    expect((await snapshot(t)).failing).toEqual(rows); // untouched, to the creation time
    await panic(t, beats, "i1", ["mastra"]);
    expect((await snapshot(t)).failing.map((r) => r.check)).toEqual(["mastra"]);
    expect(await counterSum(t, "failing:mastra")).toBe(1);
    expect(await counterSum(t, "failing:convex")).toBe(0);
  });

  test("five instances, three failing: the recount's verdict says 3 of 5, answered by the next failing sync", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2", "i3", "i4", "i5"]);
    for (const i of ["i1", "i2", "i3"]) await panic(t, beats, i, ["mastra"]);
    await settle(t);
    expect(await verdicts(t)).toEqual({ mastra: [3, 5] });
    // Refreshing counts nothing twice; the answer reads the verdict.
    const answer = await panic(t, beats, "i3", ["mastra"]);
    expect(answer.outages).toEqual([{ check: "mastra", failing: 3, live: 5 }]);
    expect(answer.live).toBe(5);
    // Every sync answers the live count.
    expect((await steady(t, beats, "i4")).live).toBe(5);
  });

  test("recovering decrements, failing again increments, leaving takes the rows and the instance out", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2", "i3"]);
    for (const i of ["i1", "i2"]) await panic(t, beats, i, ["mastra"]);
    await panic(t, beats, "i1", []);
    await settle(t);
    expect(await verdicts(t)).toEqual({ mastra: [1, 3] });
    await panic(t, beats, "i1", ["mastra"]);
    await steady(t, beats, "i2", { leaving: true, panic: { failing: ["mastra"], holdMs: HOLD } });
    await settle(t);
    expect(await verdicts(t)).toEqual({ mastra: [1, 2] });
    expect((await snapshot(t)).failing.map((r) => r.instance)).toEqual(["i1"]);
    // Nothing failing any more: the verdict row goes (no row: nothing fails).
    await panic(t, beats, "i1", []);
    await settle(t);
    expect(await verdicts(t)).toEqual({});
    expect((await snapshot(t)).live[0].live).toBe(2);
  });

  test("an instance that left is out of the counts and the listing, and warm-starts", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2"]);
    await steady(t, beats, "i2", { leaving: true });
    await settle(t);
    expect((await snapshot(t)).live[0].live).toBe(1);
    expect((await fleet(t)).instances.map((i) => i.instance)).toEqual(["i1"]);
    const back = await sync(t, signed("i2", payload({ hello: {} })));
    expect(back.warm).toEqual({ confirmedAgeMs: expect.any(Number), results: [] });
    await settle(t);
    expect((await snapshot(t)).live[0].live).toBe(2);
  });

  test("leaving must be a boolean", async () => {
    const t = setup();
    const beats = await register(t, ["i1"]);
    const error = await refusal(steady(t, beats, "i1", { leaving: "yes" }));
    expect(error.data).toEqual({ code: "invalid_argument", message: "body.leaving must be true or false" });
  });

  test("attack: ghost failing rows: a dead instance's rows stop counting, and it leaves fleet and the counts within 3 store periods", async () => {
    const t = setup();
    const P = 10 * SECOND; // the store period every instance reports
    const beats = await register(t, ["alive", "ghost"]);
    const every = { periodMs: P };
    await steady(t, beats, "ghost", { ...every, panic: { failing: ["mastra"], holdMs: FIELD_LIMITS.HOLD_CLAMP_MS } });
    await steady(t, beats, "alive", every);
    await settle(t);
    expect(await verdicts(t)).toEqual({ mastra: [1, 2] });
    const killed = Date.now(); // ghost is killed now: no last sync
    // alive syncs once a period; by 3 periods after the kill the ghost is out of everything.
    let out: number | null = null;
    for (let at = killed + P; at <= killed + 4 * P && out === null; at += P) {
      vi.setSystemTime(at);
      await steady(t, beats, "alive", every);
      await settle(t);
      const listed = (await fleet(t)).instances.map((i) => i.instance);
      if (!listed.includes("ghost") && (await verdicts(t)).mastra === undefined) out = at;
    }
    expect(out).not.toBeNull();
    expect(out! - killed).toBeLessThanOrEqual(3 * P);
    const after = await snapshot(t);
    expect(after.failing).toEqual([]); // its rows went with it
    expect(after.live[0].live).toBe(1);
    expect((await steady(t, beats, "alive", every)).live).toBe(1);
  });

  test("the recount is debounced: twenty instances failing at once schedule one recount, which writes one verdict", async () => {
    const t = setup();
    const names = Array.from({ length: 20 }, (_, i) => `i${i}`);
    const beats = await register(t, names);
    await settle(t);
    for (const name of names) await panic(t, beats, name, ["mastra"]);
    const scheduled = await t.run(async (ctx) =>
      (await ctx.db.system.query("_scheduled_functions").collect()).filter(
        (f) => f.name === "health:recount" && f.state.kind === "pending",
      ),
    );
    expect(scheduled).toHaveLength(1);
    await settle(t);
    expect(await verdicts(t)).toEqual({ mastra: [20, 20] });
    // The counters: one document per shard touched, never one per instance.
    const counters = (await snapshot(t)).counters.filter((c) => c.key === "failing:mastra");
    expect(counters.length).toBeLessThanOrEqual(16);
    expect(counters.reduce((sum, c) => sum + c.value, 0)).toBe(20);
  });

  test("after a quiet spell the first change is recounted at once; a burst's next ones wait and share one", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2", "i3"]);
    await settle(t);
    const since = async () => (await snapshot(t)).verdicts.map((v) => [v.failing, v.since]);
    vi.setSystemTime(Date.now() + 10 * SECOND);
    const first = Date.now();
    await panic(t, beats, "i1", ["mastra"]);
    await settle(t);
    expect(await since()).toEqual([[1, first]]); // no RECOUNT_DELAY_MS on the way to the fleet
    vi.setSystemTime(first + 100);
    await panic(t, beats, "i2", ["mastra"]);
    await panic(t, beats, "i3", ["mastra"]);
    await settle(t);
    expect(await since()).toEqual([[3, first + 100 + COUNTS.RECOUNT_DELAY_MS]]);
  });

  test("a lost recount (its mark left pending) is asked for again after RECOUNT_STALE_MS", async () => {
    const t = setup();
    const beats = await register(t, ["i1"]);
    await t.run(async (ctx) => {
      const mark = await ctx.db.query("sidecarRecount").first();
      await ctx.db.patch("sidecarRecount", mark!._id, { pending: true, at: Date.now() - COUNTS.RECOUNT_STALE_MS - 1 });
    });
    await panic(t, beats, "i1", ["mastra"]);
    await settle(t);
    expect(await verdicts(t)).toEqual({ mastra: [1, 1] });
  });

  test("panic with nothing failing and no rows reads one empty index range and writes nothing more", async () => {
    const tight = setup({
      documentsRead: 2,
      databaseQueries: 4,
      documentsWritten: 1,
      bytesRead: 2 * 149,
      bytesWritten: 149,
    });
    const id = await liveHeartbeat(tight, "i1");
    const answer = await panic(tight, { i1: id }, "i1", []);
    expect(answer).toMatchObject({ resend: false, outages: [], shared: [], drain: null });
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
    // The queries: the get, the (empty) range of dead heartbeats, the live count.
    const tight = setup({ documentsRead: 2, databaseQueries: 3 });
    const heartbeat = await liveHeartbeat(tight, "i1", {
      drain: { reason: "r", by: "b", key: "operator", at: NOW, until: null },
    });
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
  test("lists the counted instances by name with summary and drain, the outages, the live count and the joins", async () => {
    const t = setup();
    const summary = { ready: false, reasons: ["mastra is fail"], failing: ["mastra"] };
    await sync(t, signed("web-2", payload({ hello: {}, summary })));
    await sync(t, signed("old", payload({ hello: {}, ttlMs: LIMITS.MIN_TTL_MS })));
    const beats = await register(t, ["web-1"]);
    await drain(t, { ...DRAIN, instances: ["web-1"], forMs: HOUR });
    await panic(t, beats, "web-1", ["mastra"]);
    await t.finishAllScheduledFunctions(vi.runAllTimers); // the recount: 1 of 3 failing mastra
    vi.setSystemTime(NOW + 20 * SECOND);
    const computed = (await snapshot(t)).verdicts[0].computedAt;
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
      outages: [{ check: "mastra", failing: 1, live: 3, ageMs: NOW + 20 * SECOND - computed }],
      live: 3, // as last recounted: "old" expires at +10 s, and is not listed
      joinsLastHour: 3,
      continueCursor: expect.any(String),
      isDone: true,
    });
  });

  test("pages: at most FLEET_PAGE registry documents a call, the cursor going on to the end", async () => {
    const t = setup();
    const names = Array.from({ length: FLEET.FLEET_PAGE + 30 }, (_, i) => `web-${String(i).padStart(3, "0")}`);
    await t.run(async (ctx) => {
      for (const name of names) await enroll(ctx, name, NOW + HOUR);
    });
    await t.run(async (ctx) => {
      for (const beat of await ctx.db.query("sidecarHeartbeats").collect()) {
        await ctx.db.patch("sidecarHeartbeats", beat._id, { liveUntil: NOW + HOUR });
      }
    });
    const listed: string[] = [];
    let cursor: string | null = null;
    for (let pages = 0; pages < 5; pages++) {
      const page = await fleet(t, { body: { cursor } });
      expect(page.instances.length).toBeLessThanOrEqual(FLEET.FLEET_PAGE);
      listed.push(...page.instances.map((i) => i.instance));
      cursor = page.continueCursor;
      if (page.isDone) break;
    }
    expect(listed).toEqual(names);
  });

  test("takes its time from the verified ts, not the clock", async () => {
    const t = setup();
    await register(t, ["web-1"]);
    const asOf = NOW + 5 * MINUTE; // the heartbeat expires then
    vi.setSystemTime(asOf - 30 * SECOND);
    expect((await fleet(t, { ts: asOf - 1 })).instances.map((i) => i.seenAgeMs)).toEqual([5 * MINUTE - 1]);
    expect((await fleet(t, { ts: asOf })).instances).toEqual([]);
    // A ts before the last sync gives an age of 0, never a negative one.
    vi.setSystemTime(NOW);
    expect((await fleet(t, { ts: NOW - 30 * SECOND })).instances[0].seenAgeMs).toBe(0);
  });
});

// ---------------------------------------------------------------------------------------------

describe("watch (the subscription's query)", () => {
  const watch = (t: T, instance: string, token: string | undefined) =>
    t.query(api.health.watch, { instance, token: token ?? "" });
  /** What watch reads: a steady sync must write none of it (no subscription re-runs). */
  const watched = async (t: T) => {
    const { mailboxes, verdicts, live, sharedStatus } = await snapshot(t);
    return { mailboxes, verdicts, live, sharedStatus };
  };

  test("answers the instance's drain, the verdicts, the live count and the shared statuses; a wrong token is refused", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2"]);
    const token = tokenOf("i1");
    expect(await watch(t, "i1", token)).toEqual({ drain: null, live: 0, verdicts: [], shared: [] });
    await drain(t, { ...DRAIN, instances: ["i1"], forMs: HOUR });
    await panic(t, beats, "i2", ["mastra"]);
    const shared = [{ check: "db", fingerprint: "f", leaseMs: 30_000, result: result("db", { fingerprint: "f", status: "fail" }) }];
    await steady(t, beats, "i2", { shared });
    await t.finishAllScheduledFunctions(vi.runAllTimers);
    const answer = await watch(t, "i1", token);
    expect(answer.drain).toEqual({ reason: "kernel upgrade", by: "ops@bastion", key: "operator", at: NOW, until: NOW + HOUR });
    expect(answer.live).toBe(2);
    expect(answer.verdicts).toEqual([{ check: "mastra", failing: 1, live: 2, since: expect.any(Number) }]);
    expect(answer.shared).toEqual([{ check: "db", fingerprint: "f", status: "fail", since: expect.any(Number) }]);
    // Another instance's token, a made-up one, a malformed one.
    for (const wrong of [tokenOf("i2"), "0".repeat(64)]) {
      expect((await refusal(watch(t, "i1", wrong))).data).toEqual({
        code: "unauthorized",
        message: "this instance's token does not match: send hello",
      });
    }
    expect((await refusal(watch(t, "i1", "xyz"))).data.code).toBe("invalid_argument");
    expect((await refusal(watch(t, "", token))).data.code).toBe("invalid_argument");
    // A new hello (a restart, or the name taken over) gives a new token: the old one is refused.
    await sync(t, signed("i1", payload({ hello: {} })));
    expect((await refusal(watch(t, "i1", token))).data.code).toBe("unauthorized");
    await watch(t, "i1", tokenOf("i1"));
  });

  test("a steady sync, a refreshed failing sync and a renewed lease write nothing watch reads", async () => {
    const t = setup();
    const beats = await register(t, ["i1", "i2"]);
    const shared = (status: string) => [
      { check: "db", fingerprint: "f", leaseMs: 30_000, result: result("db", { fingerprint: "f", status }) },
    ];
    await panic(t, beats, "i1", ["mastra"]);
    await steady(t, beats, "i2", { shared: shared("pass") });
    await t.finishAllScheduledFunctions(vi.runAllTimers);
    const before = await watched(t);
    await steady(t, beats, "i1", { panic: { failing: ["mastra"], holdMs: HOLD } });
    await steady(t, beats, "i2", { shared: shared("pass") });
    await steady(t, beats, "i2");
    await t.finishAllScheduledFunctions(vi.runAllTimers);
    expect(await watched(t)).toEqual(before);
    // A status change does write the status row.
    await steady(t, beats, "i2", { shared: shared("fail") });
    expect((await watched(t)).sharedStatus[0].status).toBe("fail");
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
  const purgeAll = async (t: T) => {
    await t.mutation(internal.health.purgeExpired, {});
    await t.finishAllScheduledFunctions(vi.runAllTimers);
  };

  test("an expired instance leaves the counts, and its failing rows, mailbox, registry and heartbeat go; never the drain log", async () => {
    const t = setup();
    const beats = await register(t, ["gone", "live"], LIMITS.MIN_TTL_MS);
    const failing = { failing: ["mastra", "convex"], holdMs: HOLD };
    await steady(t, beats, "gone", { ttlMs: LIMITS.MIN_TTL_MS, panic: failing });
    await drain(t, { ...DRAIN, instances: ["gone"] });
    await t.finishAllScheduledFunctions(vi.runAllTimers);
    vi.setSystemTime(NOW + MINUTE);
    await register(t, ["live"]); // live again (its hello also takes gone out of the counts)
    const before = await snapshot(t);
    await purgeAll(t);
    const after = await snapshot(t);
    expect(after.instances.map((i) => i.instance)).toEqual(["live"]);
    expect(after.mailboxes.map((m) => m.instance)).toEqual(["live"]);
    expect(after.heartbeats).toHaveLength(1);
    expect(after.failing).toEqual([]);
    expect(after.verdicts).toEqual([]);
    expect(after.live[0].live).toBe(1);
    expect(after.drainLog).toEqual(before.drainLog);
    expect(after.drainLog).toHaveLength(1);
  });

  test("reaches every row of every table: leftovers go, what is recent stays", async () => {
    const t = setup();
    const later = NOW + 3 * DAY;
    await t.run(async (ctx) => {
      await enroll(ctx, "live", later + HOUR);
      // Leftovers: rows of instances that are gone, failing rows of an uncounted instance, old
      // leases and statuses, spent nonces, old join buckets, zero counters, census rows (v2).
      for (let i = 0; i < 3; i++) await ctx.db.insert("sidecarResults", storedRow(`ghost-${i}`, "a"));
      await ctx.db.insert("sidecarFailing", { check: "a", instance: "live", until: 0 });
      await ctx.db.insert("sidecarFailing", { check: "a", instance: "ghost-0", until: 0 });
      for (const leaseUntil of [later - DAY, later - DAY + 1]) {
        await ctx.db.insert("sidecarShared", { check: `s${leaseUntil}`, fingerprint: "f", holder: "x", leaseUntil, result: null });
      }
      await ctx.db.insert("sidecarSharedStatus", { check: "old", fingerprint: "f", status: "pass", since: later - DAY });
      await ctx.db.insert("sidecarSharedStatus", { check: "new", fingerprint: "f", status: "fail", since: later - 1 });
      await ctx.db.insert("sidecarNonces", { nonce: "0".repeat(32), expiresAt: later });
      await ctx.db.insert("sidecarNonces", { nonce: "1".repeat(32), expiresAt: later + 1 });
      await ctx.db.insert("sidecarJoins", { minute: Math.floor(later / MINUTE) - 121, shard: 0, count: 1 });
      await ctx.db.insert("sidecarJoins", { minute: Math.floor(later / MINUTE) - 60, shard: 0, count: 1 });
      await ctx.db.insert("sidecarCounters", { key: "failing:a", shard: 3, value: 0 });
      await ctx.db.insert("sidecarCounters", { key: "live", shard: 3, value: 0 });
      await ctx.db.insert("sidecarCensus", { check: "a", failing: 1, live: 1, computedAt: later });
      await ctx.db.insert("sidecarDrainLog", { instance: "x", action: "undrain", reason: null, by: "b", at: 0, until: null });
    });
    vi.setSystemTime(later);
    await purgeAll(t);
    const after = await snapshot(t);
    expect(after.results).toEqual([]);
    expect(after.failing).toEqual([]); // live is enrolled uncounted: its row is a leftover too
    expect(after.shared.map((r) => r.leaseUntil)).toEqual([later - DAY + 1]);
    expect(after.sharedStatus.map((r) => r.check)).toEqual(["new"]);
    expect(after.nonces.map((r) => r.expiresAt)).toEqual([later + 1]);
    expect(after.joins).toHaveLength(1);
    expect(after.counters.map((c) => c.key)).toEqual(["live"]);
    expect(after.census).toEqual([]);
    expect(after.drainLog).toHaveLength(1);
    expect(after.instances.map((i) => i.instance)).toEqual(["live"]);
  });

  test("the sweep shares the run's budget and reschedules when it runs out", async () => {
    const t = setup();
    await t.run(async (ctx) => {
      for (let i = 0; i < LIMITS.PURGE_BATCH + 10; i++) {
        await ctx.db.insert("sidecarFailing", { check: `c${i % 7}`, instance: `i${i}`, until: NOW - 2 * HOUR });
      }
    });
    await purgeAll(t);
    expect((await snapshot(t)).failing).toEqual([]);
  });
});
