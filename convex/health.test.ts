/// <reference types="vite/client" />
import { convexTest } from "convex-test";
import { ConvexError } from "convex/values";
import { afterEach, beforeEach, describe, expect, test, vi } from "vitest";
import { api, internal } from "./_generated/api";
import * as health from "./health";
import schema from "./schema";

const modules = import.meta.glob("./**/*.*s");
const SECRET = "test-secret-0123456789";
const NOW = 1_795_899_714_996;
const MINUTE = 60_000;

type T = ReturnType<typeof setup>;
const setup = () => convexTest(schema, modules);

beforeEach(() => {
  vi.stubEnv("HEALTH_SIDECAR_SECRET", SECRET);
});
afterEach(() => {
  vi.unstubAllEnvs();
});

function result(check: string, overrides: Record<string, unknown> = {}) {
  return {
    check,
    status: "pass" as const,
    observedAt: NOW - 1000,
    latencyMs: 12.5,
    output: "ok",
    consecutiveFailures: 0,
    consecutiveSuccesses: 3,
    lastSuccessAt: NOW - 1000,
    ...overrides,
  };
}

function reportArgs(instance: string, checks: string[], overrides: Record<string, unknown> = {}) {
  return { secret: SECRET, now: NOW, instance, ttlSeconds: 60, results: checks.map((c) => result(c)), ...overrides };
}

const claimArgs = (instance: string, overrides: Record<string, unknown> = {}) => ({
  secret: SECRET,
  now: NOW,
  check: "mastra",
  instance,
  freshMs: 30_000,
  leaseMs: 10_000,
  ...overrides,
});

/** Both tables, whole documents (ids included), to prove that nothing changed. */
const snapshot = (t: T) =>
  t.run(async (ctx) => ({
    health: await ctx.db.query("sidecarHealth").collect(),
    leases: await ctx.db.query("sidecarLeases").collect(),
  }));

async function errorOf(promise: Promise<unknown>): Promise<unknown> {
  return promise.then(
    () => expect.unreachable("the call should have been refused"),
    (error: unknown) => error,
  );
}

async function expectCode(promise: Promise<unknown>, code: string) {
  const error = await errorOf(promise);
  expect(error).toBeInstanceOf(ConvexError);
  expect((error as ConvexError<{ code: string }>).data.code).toBe(code);
}

// Each public function with valid arguments (for a secret to be swapped or removed).
const publicFunctions: Record<string, { args: () => Record<string, unknown>; call: (t: T, args: object) => Promise<unknown> }> = {
  report: { args: () => reportArgs("i9", ["x"]), call: (t, a) => t.mutation(api.health.report, a as never) },
  instance: { args: () => ({ secret: SECRET, now: NOW, instance: "i1" }), call: (t, a) => t.query(api.health.instance, a as never) },
  fleet: { args: () => ({ secret: SECRET, now: NOW }), call: (t, a) => t.query(api.health.fleet, a as never) },
  claim: { args: () => claimArgs("i9"), call: (t, a) => t.mutation(api.health.claim, a as never) },
};

describe("authorization", () => {
  async function seeded() {
    const t = setup();
    await t.mutation(api.health.report, reportArgs("i1", ["convex", "mastra"]));
    await t.mutation(api.health.claim, claimArgs("i1", { check: "shared" }));
    return t;
  }

  for (const [name, fn] of Object.entries(publicFunctions)) {
    const call = (t: T, secret: string) => fn.call(t, { ...fn.args(), secret });
    test.each([
      ["a wrong secret", "not-the-secret"],
      ["an empty secret", ""],
      ["a prefix of the secret", SECRET.slice(0, -1)],
      ["the secret plus a byte", `${SECRET}x`],
    ])(`${name} refuses %s and changes nothing`, async (_, secret) => {
      const t = await seeded();
      const before = await snapshot(t);
      await expectCode(call(t, secret), "unauthorized");
      expect(await snapshot(t)).toEqual(before);
    });

    test(`${name} refuses everything when HEALTH_SIDECAR_SECRET is unset or empty`, async () => {
      const t = await seeded();
      const before = await snapshot(t);
      vi.stubEnv("HEALTH_SIDECAR_SECRET", undefined);
      expect(process.env.HEALTH_SIDECAR_SECRET).toBeUndefined();
      await expectCode(call(t, SECRET), "unauthorized");
      await expectCode(call(t, ""), "unauthorized");
      vi.stubEnv("HEALTH_SIDECAR_SECRET", "");
      await expectCode(call(t, ""), "unauthorized");
      expect(await snapshot(t)).toEqual(before);
    });

    test(`${name} refuses a missing secret argument (validator)`, async () => {
      const t = setup();
      const { secret: _, ...args } = fn.args();
      await expect(fn.call(t, args)).rejects.toThrow(/Missing required field `secret`/);
    });
  }

  test("a bad `now` is invalid_argument, checked after the secret", async () => {
    const t = setup();
    await expectCode(t.query(api.health.fleet, { secret: SECRET, now: -1 }), "invalid_argument");
    await expectCode(t.query(api.health.fleet, { secret: SECRET, now: Number.NaN }), "invalid_argument");
    await expectCode(t.query(api.health.fleet, { secret: "nope", now: -1 }), "unauthorized");
  });
});

describe("report", () => {
  test("validators refuse wrong types, unknown fields and missing fields", async () => {
    const t = setup();
    const bad: Array<[Record<string, unknown>, RegExp]> = [
      [{ instance: 5 }, /Expected `string`/],
      [{ ttlSeconds: "60" }, /Expected `number`/],
      [{ extra: true }, /Unexpected field `extra`/],
      [{ results: [result("a", { status: "ok" })] }, /Expected one of/],
      [{ results: [result("a", { surprise: 1 })] }, /Unexpected field `surprise`/],
      [{ results: [result("a", { lastSuccessAt: undefined })] }, /Missing required field `lastSuccessAt`/],
      [{ results: "a" }, /Expected `Array`/],
    ];
    for (const [overrides, message] of bad) {
      await expect(t.mutation(api.health.report, { ...reportArgs("i1", ["a"]), ...overrides } as never)).rejects.toThrow(
        message,
      );
    }
    const { ttlSeconds: _, ...missing } = reportArgs("i1", ["a"]);
    await expect(t.mutation(api.health.report, missing as never)).rejects.toThrow(/Missing required field `ttlSeconds`/);
    expect((await snapshot(t)).health).toEqual([]);
  });

  test("the handler refuses bad batches with invalid_argument and writes nothing", async () => {
    const t = setup();
    const checks = (n: number) => Array.from({ length: n }, (_, i) => `check-${i}`);
    const bad: Array<Record<string, unknown>> = [
      { results: [] },
      { results: checks(101).map((c) => result(c)) },
      { ttlSeconds: 0 },
      { ttlSeconds: -5 },
      { ttlSeconds: 604_801 },
      { ttlSeconds: Number.POSITIVE_INFINITY },
      { ttlSeconds: Number.NaN },
      { instance: "" },
      { instance: "i".repeat(201) },
      { results: [result("a"), result("b"), result("a")] },
      { results: [result("")] },
      { results: [result("c".repeat(201))] },
      { results: [result("a", { output: "o".repeat(1025) })] },
      { results: [result("a", { latencyMs: -1 })] },
      { results: [result("a", { observedAt: Number.NaN })] },
      { results: [result("a", { consecutiveFailures: Number.POSITIVE_INFINITY })] },
      { results: [result("a", { lastSuccessAt: -3 })] },
    ];
    for (const overrides of bad) {
      await expectCode(t.mutation(api.health.report, { ...reportArgs("i1", ["a"]), ...overrides }), "invalid_argument");
    }
    expect((await snapshot(t)).health).toEqual([]);
    // The limits themselves are accepted.
    const ok = await t.mutation(api.health.report, {
      ...reportArgs("i".repeat(200), []),
      ttlSeconds: 604_800,
      results: checks(100).map((c) => result(c, { output: "o".repeat(1024), lastSuccessAt: null })),
    });
    expect(ok).toEqual({ written: 100, expiresAt: NOW + 604_800_000 });
  });

  test("upserts one row per (instance, check) and sets expiresAt", async () => {
    const t = setup();
    const first = await t.mutation(api.health.report, reportArgs("i1", ["convex", "mastra"]));
    expect(first).toEqual({ written: 2, expiresAt: NOW + 60_000 });
    await t.mutation(api.health.report, reportArgs("i2", ["convex"]));
    const second = await t.mutation(api.health.report, {
      ...reportArgs("i1", []),
      now: NOW + MINUTE,
      ttlSeconds: 90,
      results: [result("convex", { status: "fail", output: "timeout", consecutiveFailures: 1, consecutiveSuccesses: 0 })],
    });
    expect(second).toEqual({ written: 1, expiresAt: NOW + MINUTE + 90_000 });

    const { health } = await snapshot(t);
    expect(health).toHaveLength(3);
    const i1 = health.filter((r) => r.instance === "i1");
    expect(i1.find((r) => r.check === "convex")).toMatchObject({
      status: "fail",
      output: "timeout",
      consecutiveFailures: 1,
      expiresAt: NOW + MINUTE + 90_000,
    });
    expect(i1.find((r) => r.check === "mastra")).toMatchObject({ status: "pass", expiresAt: NOW + 60_000 });
    expect(health.find((r) => r.instance === "i2")).toMatchObject({ check: "convex", status: "pass" });
  });
});

describe("instance and fleet", () => {
  async function twoInstances() {
    const t = setup();
    await t.mutation(api.health.report, reportArgs("i1", ["zeta", "alpha", "mid"]));
    await t.mutation(api.health.report, { ...reportArgs("i0", ["beta", "alpha"]), ttlSeconds: 600 });
    return t;
  }

  test("instance returns that instance's unexpired rows, plain and sorted by check", async () => {
    const t = await twoInstances();
    const rows = await t.query(api.health.instance, { secret: SECRET, now: NOW, instance: "i1" });
    expect(rows.map((r) => r.check)).toEqual(["alpha", "mid", "zeta"]);
    expect(rows[0]).toEqual({ instance: "i1", ...result("alpha"), expiresAt: NOW + 60_000 });
    expect(Object.keys(rows[0]).sort()).toEqual(
      [
        "check",
        "consecutiveFailures",
        "consecutiveSuccesses",
        "expiresAt",
        "instance",
        "lastSuccessAt",
        "latencyMs",
        "observedAt",
        "output",
        "status",
      ].sort(),
    );
    // expiresAt > now, strictly
    expect(await t.query(api.health.instance, { secret: SECRET, now: NOW + 59_999, instance: "i1" })).toHaveLength(3);
    expect(await t.query(api.health.instance, { secret: SECRET, now: NOW + 60_000, instance: "i1" })).toEqual([]);
    expect(await t.query(api.health.instance, { secret: SECRET, now: NOW, instance: "nobody" })).toEqual([]);
  });

  test("fleet returns every instance's unexpired rows, sorted by instance then check", async () => {
    const t = await twoInstances();
    const all = await t.query(api.health.fleet, { secret: SECRET, now: NOW });
    expect(all.map((r) => `${r.instance}/${r.check}`)).toEqual(["i0/alpha", "i0/beta", "i1/alpha", "i1/mid", "i1/zeta"]);
    expect(all.every((r) => !("_id" in r) && !("_creationTime" in r))).toBe(true);
    const later = await t.query(api.health.fleet, { secret: SECRET, now: NOW + 60_000 });
    expect(later.map((r) => `${r.instance}/${r.check}`)).toEqual(["i0/alpha", "i0/beta"]);
    expect(await t.query(api.health.fleet, { secret: SECRET, now: NOW + 600_000 })).toEqual([]);
  });
});

describe("purgeExpired", () => {
  async function seed(t: T, healthExpiries: number[], leaseExpiries: number[]) {
    await t.run(async (ctx) => {
      for (const [i, expiresAt] of healthExpiries.entries()) {
        await ctx.db.insert("sidecarHealth", { instance: `i${i}`, ...result("c"), expiresAt });
      }
      for (const [i, expiresAt] of leaseExpiries.entries()) {
        await ctx.db.insert("sidecarLeases", { check: `c${i}`, holder: "i1", expiresAt });
      }
    });
  }

  test("deletes exactly the rows with expiresAt <= now, in both tables", async () => {
    const t = setup();
    await seed(t, [NOW - 1, NOW, NOW + 1, NOW + MINUTE], [NOW - MINUTE, NOW + 1]);
    expect(await t.mutation(internal.health.purgeExpired, { now: NOW })).toEqual({ deleted: 3 });
    const { health, leases } = await snapshot(t);
    expect(health.map((r) => r.expiresAt).sort()).toEqual([NOW + 1, NOW + MINUTE]);
    expect(leases.map((r) => r.expiresAt)).toEqual([NOW + 1]);
    expect(await t.mutation(internal.health.purgeExpired, { now: NOW })).toEqual({ deleted: 0 });
  });

  test("defaults to the current time", async () => {
    const t = setup();
    const now = Date.now();
    await seed(t, [now - MINUTE, now + 10 * MINUTE], [now - MINUTE]);
    expect(await t.mutation(internal.health.purgeExpired, {})).toEqual({ deleted: 2 });
    expect((await snapshot(t)).health.map((r) => r.expiresAt)).toEqual([now + 10 * MINUTE]);
  });

  test("deletes at most 1000 rows a run", async () => {
    const t = setup();
    await seed(t, Array(700).fill(NOW - 1), Array(400).fill(NOW - 1));
    expect(await t.mutation(internal.health.purgeExpired, { now: NOW })).toEqual({ deleted: 1000 });
    expect(await t.mutation(internal.health.purgeExpired, { now: NOW })).toEqual({ deleted: 100 });
    const { health, leases } = await snapshot(t);
    expect(health.length + leases.length).toBe(0);
  });

  test("is internal, so no client can call it", () => {
    expect(health.purgeExpired.isInternal).toBe(true);
    // @ts-expect-error purgeExpired is not part of the public api
    void api.health.purgeExpired;
  });
});

describe("claim", () => {
  test("a fresh shared result is returned and no lease is granted", async () => {
    const t = setup();
    await t.mutation(api.health.report, { ...reportArgs("i1", []), results: [result("mastra", { observedAt: NOW - 5000 })] });
    const answer = await t.mutation(api.health.claim, claimArgs("i2"));
    expect(answer).toEqual({
      granted: false,
      result: { instance: "i1", ...result("mastra", { observedAt: NOW - 5000 }), expiresAt: NOW + 60_000 },
      holder: null,
      leaseExpiresAt: null,
    });
    expect((await snapshot(t)).leases).toEqual([]);
  });

  test("the newest fresh result wins; stale and expired results do not count", async () => {
    const t = setup();
    await t.mutation(api.health.report, { ...reportArgs("old", []), results: [result("mastra", { observedAt: NOW - 40_000 })] });
    let answer = await t.mutation(api.health.claim, claimArgs("i2"));
    expect(answer).toMatchObject({ granted: true, holder: "i2" });

    await t.mutation(api.health.report, { ...reportArgs("a", []), results: [result("mastra", { observedAt: NOW - 20_000 })] });
    await t.mutation(api.health.report, { ...reportArgs("b", []), results: [result("mastra", { observedAt: NOW - 10_000 })] });
    answer = await t.mutation(api.health.claim, claimArgs("i3"));
    expect(answer.result).toMatchObject({ instance: "b", observedAt: NOW - 10_000 });

    // Fresh by observedAt but already expired: ignored, and i2 still holds the lease.
    answer = await t.mutation(api.health.claim, claimArgs("i3", { now: NOW + 60_000, freshMs: 86_400_000 }));
    expect(answer).toMatchObject({ granted: true, holder: "i3" });
  });

  test("of 20 concurrent claims exactly one is granted", async () => {
    const t = setup();
    const instances = Array.from({ length: 20 }, (_, i) => `instance-${i}`);
    const answers = await Promise.all(instances.map((i) => t.mutation(api.health.claim, claimArgs(i))));
    const granted = answers.filter((a) => a.granted);
    expect(granted).toHaveLength(1);
    const winner = granted[0].holder;
    for (const a of answers) {
      expect(a).toMatchObject({ result: null, holder: winner, leaseExpiresAt: NOW + 10_000 });
    }
    const { leases } = await snapshot(t);
    expect(leases).toHaveLength(1);
    expect(leases[0]).toMatchObject({ check: "mastra", holder: winner, expiresAt: NOW + 10_000 });
  });

  test("an unexpired lease blocks others, an expired one can be taken over, the holder can renew", async () => {
    const t = setup();
    expect(await t.mutation(api.health.claim, claimArgs("a"))).toEqual({
      granted: true,
      result: null,
      holder: "a",
      leaseExpiresAt: NOW + 10_000,
    });
    expect(await t.mutation(api.health.claim, claimArgs("b", { now: NOW + 9_999 }))).toEqual({
      granted: false,
      result: null,
      holder: "a",
      leaseExpiresAt: NOW + 10_000,
    });
    // The holder renews.
    expect(await t.mutation(api.health.claim, claimArgs("a", { now: NOW + 5_000 }))).toMatchObject({
      granted: true,
      holder: "a",
      leaseExpiresAt: NOW + 15_000,
    });
    // Expired (expiresAt <= now): another instance takes it.
    expect(await t.mutation(api.health.claim, claimArgs("b", { now: NOW + 15_000 }))).toMatchObject({
      granted: true,
      holder: "b",
      leaseExpiresAt: NOW + 25_000,
    });
    const { leases } = await snapshot(t);
    expect(leases).toHaveLength(1);
    expect(leases[0]).toMatchObject({ holder: "b", expiresAt: NOW + 25_000 });
  });

  test("refuses bad windows and names with invalid_argument", async () => {
    const t = setup();
    for (const overrides of [
      { freshMs: 0 },
      { freshMs: -1 },
      { freshMs: 86_400_001 },
      { leaseMs: 0 },
      { leaseMs: Number.POSITIVE_INFINITY },
      { leaseMs: 86_400_001 },
      { check: "" },
      { instance: "" },
    ]) {
      await expectCode(t.mutation(api.health.claim, claimArgs("a", overrides)), "invalid_argument");
    }
    expect(await snapshot(t)).toEqual({ health: [], leases: [] });
  });
});
