/**
 * health-sidecar's store: probe results with a TTL, and leases for shared checks.
 *
 * Every public function takes the shared `secret` (checked against the
 * deployment's HEALTH_SIDECAR_SECRET environment variable) and the caller's
 * clock as `now` (ms since the epoch): queries never read the time themselves,
 * because Convex caches query results and does not re-run them as time passes.
 * Errors meant for the caller are ConvexErrors whose data is {code, message};
 * callers branch on `code`: "unauthorized" or "invalid_argument".
 */
import { ConvexError, v } from "convex/values";
import type { Doc } from "./_generated/dataModel";
import { internalMutation, mutation, query } from "./_generated/server";
import { resultFields, rowFields } from "./schema";

const MAX_RESULTS_PER_REPORT = 100;
const MAX_TTL_SECONDS = 7 * 24 * 3600;
const MAX_NAME_LENGTH = 200;
const MAX_OUTPUT_LENGTH = 1024;
const MAX_WINDOW_MS = 24 * 3600 * 1000;
const MAX_ROWS = 2000;
const PURGE_BATCH = 1000;

const credentials = { secret: v.string(), now: v.number() };
const row = v.object(rowFields);
type Row = Omit<Doc<"sidecarHealth">, "_id" | "_creationTime">;

function fail(code: "unauthorized" | "invalid_argument", message: string): never {
  throw new ConvexError({ code, message });
}

/** Compares every byte whatever the first difference, so timing reveals nothing but the length. */
function constantTimeEqual(a: string, b: string): boolean {
  const x = new TextEncoder().encode(a);
  const y = new TextEncoder().encode(b);
  let diff = x.length ^ y.length;
  for (let i = 0; i < Math.max(x.length, y.length); i++) {
    diff |= (x[i] ?? 0) ^ (y[i] ?? 0);
  }
  return diff === 0;
}

/** Refuses the call unless `secret` matches; then checks `now`. */
function authorize({ secret, now }: { secret: string; now: number }) {
  const expected = process.env.HEALTH_SIDECAR_SECRET;
  if (!expected || !constantTimeEqual(secret, expected)) {
    fail("unauthorized", "wrong or missing secret (HEALTH_SIDECAR_SECRET)");
  }
  requireNonNegative("now", now);
}

function requireNonNegative(field: string, value: number) {
  if (!Number.isFinite(value) || value < 0) {
    fail("invalid_argument", `${field} must be a finite number >= 0`);
  }
}

function requireInRange(field: string, value: number, max: number) {
  if (!Number.isFinite(value) || value <= 0 || value > max) {
    fail("invalid_argument", `${field} must be > 0 and <= ${max}`);
  }
}

function requireName(field: string, value: string) {
  if (value.length === 0 || value.length > MAX_NAME_LENGTH) {
    fail("invalid_argument", `${field} must be 1 to ${MAX_NAME_LENGTH} characters`);
  }
}

function plain({ _id, _creationTime, ...rest }: Doc<"sidecarHealth">): Row {
  return rest;
}

const compare = (x: string, y: string) => (x < y ? -1 : x > y ? 1 : 0);
const byInstanceThenCheck = (a: Row, b: Row) =>
  compare(a.instance, b.instance) || compare(a.check, b.check);

/** Upserts one row per (instance, check) and sets their expiry to now + ttl. */
export const report = mutation({
  args: {
    ...credentials,
    instance: v.string(),
    ttlSeconds: v.number(),
    results: v.array(v.object(resultFields)),
  },
  returns: v.object({ written: v.number(), expiresAt: v.number() }),
  handler: async (ctx, args) => {
    authorize(args);
    const { instance, ttlSeconds, results, now } = args;
    requireName("instance", instance);
    requireInRange("ttlSeconds", ttlSeconds, MAX_TTL_SECONDS);
    if (results.length < 1 || results.length > MAX_RESULTS_PER_REPORT) {
      fail("invalid_argument", `results must hold 1 to ${MAX_RESULTS_PER_REPORT} entries`);
    }
    const seen = new Set<string>();
    for (const r of results) {
      requireName("check", r.check);
      if (seen.has(r.check)) fail("invalid_argument", `duplicate check "${r.check}"`);
      seen.add(r.check);
      if (r.output.length > MAX_OUTPUT_LENGTH) {
        fail("invalid_argument", `output of "${r.check}" exceeds ${MAX_OUTPUT_LENGTH} characters`);
      }
      requireNonNegative("observedAt", r.observedAt);
      requireNonNegative("latencyMs", r.latencyMs);
      requireNonNegative("consecutiveFailures", r.consecutiveFailures);
      requireNonNegative("consecutiveSuccesses", r.consecutiveSuccesses);
      if (r.lastSuccessAt !== null) requireNonNegative("lastSuccessAt", r.lastSuccessAt);
    }

    const expiresAt = now + ttlSeconds * 1000;
    for (const r of results) {
      const doc = { instance, ...r, expiresAt };
      const existing = await ctx.db
        .query("sidecarHealth")
        .withIndex("by_instance_check", (q) => q.eq("instance", instance).eq("check", r.check))
        .unique();
      if (existing) await ctx.db.replace("sidecarHealth", existing._id, doc);
      else await ctx.db.insert("sidecarHealth", doc);
    }
    return { written: results.length, expiresAt };
  },
});

/** The unexpired results of one instance, sorted by check (warm start). */
export const instance = query({
  args: { ...credentials, instance: v.string() },
  returns: v.array(row),
  handler: async (ctx, args) => {
    authorize(args);
    const rows = await ctx.db
      .query("sidecarHealth")
      .withIndex("by_instance_check", (q) => q.eq("instance", args.instance))
      .filter((q) => q.gt(q.field("expiresAt"), args.now))
      .take(MAX_ROWS);
    return rows.map(plain).sort(byInstanceThenCheck);
  },
});

/** The unexpired results of every instance (at most MAX_ROWS, the latest-expiring), sorted by instance then check. */
export const fleet = query({
  args: credentials,
  returns: v.array(row),
  handler: async (ctx, args) => {
    authorize(args);
    const rows = await ctx.db
      .query("sidecarHealth")
      .withIndex("by_expiresAt", (q) => q.gt("expiresAt", args.now))
      .order("desc")
      .take(MAX_ROWS);
    return rows.map(plain).sort(byInstanceThenCheck);
  },
});

/**
 * One probe of a shared check for the whole fleet: returns a fresh result if
 * any instance has one, else grants (or renews) a lease to the caller unless
 * another instance holds an unexpired one. Mutations are serializable, so of
 * concurrent callers exactly one is granted.
 */
export const claim = mutation({
  args: {
    ...credentials,
    check: v.string(),
    instance: v.string(),
    freshMs: v.number(),
    leaseMs: v.number(),
  },
  returns: v.object({
    granted: v.boolean(),
    result: v.union(row, v.null()),
    holder: v.union(v.string(), v.null()),
    leaseExpiresAt: v.union(v.number(), v.null()),
  }),
  handler: async (ctx, args) => {
    authorize(args);
    const { now, check, instance, freshMs, leaseMs } = args;
    requireName("check", check);
    requireName("instance", instance);
    requireInRange("freshMs", freshMs, MAX_WINDOW_MS);
    requireInRange("leaseMs", leaseMs, MAX_WINDOW_MS);

    const fresh = await ctx.db
      .query("sidecarHealth")
      .withIndex("by_check_observedAt", (q) => q.eq("check", check).gte("observedAt", now - freshMs))
      .order("desc")
      .filter((q) => q.gt(q.field("expiresAt"), now))
      .first();
    if (fresh) return { granted: false, result: plain(fresh), holder: null, leaseExpiresAt: null };

    const lease = await ctx.db
      .query("sidecarLeases")
      .withIndex("by_check", (q) => q.eq("check", check))
      .unique();
    if (lease && lease.expiresAt > now && lease.holder !== instance) {
      return { granted: false, result: null, holder: lease.holder, leaseExpiresAt: lease.expiresAt };
    }
    const leaseExpiresAt = now + leaseMs;
    if (lease) await ctx.db.patch("sidecarLeases", lease._id, { holder: instance, expiresAt: leaseExpiresAt });
    else await ctx.db.insert("sidecarLeases", { check, holder: instance, expiresAt: leaseExpiresAt });
    return { granted: true, result: null, holder: instance, leaseExpiresAt };
  },
});

/** Deletes expired results and leases, at most PURGE_BATCH rows a run (crons.ts runs it). */
export const purgeExpired = internalMutation({
  args: { now: v.optional(v.number()) },
  returns: v.object({ deleted: v.number() }),
  handler: async (ctx, args) => {
    const now = args.now ?? Date.now();
    let deleted = 0;
    for (const table of ["sidecarHealth", "sidecarLeases"] as const) {
      if (deleted >= PURGE_BATCH) break;
      const expired = await ctx.db
        .query(table)
        .withIndex("by_expiresAt", (q) => q.lte("expiresAt", now))
        .take(PURGE_BATCH - deleted);
      for (const doc of expired) await ctx.db.delete(table, doc._id);
      deleted += expired.length;
    }
    return { deleted };
  },
});
