/**
 * The fleet side of health-sidecar's store (convex/health.ts defines the functions; these are
 * plain helpers): the summary an instance keeps on its registry document, its failing panic
 * checks (sidecarFailing rows, counted by healthCounts.ts), shared checks (sidecarShared leases,
 * sidecarSharedStatus), drain requests (the heartbeat and the mailbox, sidecarDrainLog as audit
 * trail), the paged fleet listing, and the purge's sweep of every table.
 *
 * Costs: none of this runs in a steady-state sync without the fleet keys. A sync with `panic`
 * reads the instance's own sidecarFailing rows (an empty index range when there are none), writes
 * rows and one counter shard per check only when its set of failing checks changes, and reads
 * the verdict of each failing check: a bounded number of documents, however large the fleet.
 */
import { v, type Infer } from "convex/values";
import type { Doc, Id } from "./_generated/dataModel";
import type { MutationCtx, QueryCtx } from "./_generated/server";
import { countFailing, counted, failingRowsOf, liveCount, verdictOf } from "./healthCounts";
import {
  LIMITS,
  refuse,
  toStored,
  toWire,
  wireResult,
  type DrainRequest,
  type SharedCheck,
  type Summary,
} from "./healthProtocol";

/** How the fleet features use time (ms); server behaviour, not bounds of the protocol. */
export const FLEET = {
  STALE_PURGE_AGE_MS: 86_400_000, // the purge deletes shared leases ended, and statuses older
  JOINS_KEPT_MINUTES: 120, // join buckets are kept this long (fleet reports the last hour's)
  FLEET_PAGE: 100, // instances health:fleet reads a call, at most
} as const;

type Reader = Pick<QueryCtx, "db">;
type Registry = Doc<"sidecarInstances">;
type Heartbeat = Doc<"sidecarHeartbeats">;

export const drainAnswer = v.union(
  v.null(),
  v.object({
    reason: v.string(),
    by: v.string(), // the caller's claim
    key: v.union(v.literal("operator"), v.null()), // which key signed the drain (null: before v3)
    ageMs: v.number(),
    remainingMs: v.union(v.number(), v.null()),
  }),
);
export const outageAnswer = v.object({ check: v.string(), failing: v.number(), live: v.number() });
export const sharedAnswer = v.object({ check: v.string(), holder: v.boolean(), result: v.union(wireResult, v.null()) });
type Outage = Infer<typeof outageAnswer>;
type SharedAnswer = Infer<typeof sharedAnswer>;

// ---------------------------------------------------------------------------------------------
// Liveness and names.

/** Unexpired: the instance's documents are intact (its warm start may use them). */
export function isLive(beat: Heartbeat, now: number): boolean {
  return beat.expiresAt > now;
}

export function registryOf(ctx: Reader, instance: string) {
  return ctx.db
    .query("sidecarInstances")
    .withIndex("by_instance", (q) => q.eq("instance", instance))
    .unique();
}

export function mailboxOf(ctx: Reader, instance: string) {
  return ctx.db
    .query("sidecarMailbox")
    .withIndex("by_instance", (q) => q.eq("instance", instance))
    .unique();
}

function compare(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

// ---------------------------------------------------------------------------------------------
// The summary, on the registry document.

/** The summary fields to patch when `summary` differs from what `registry` holds, else null. */
export function summaryChange(registry: Registry | null, summary: Summary | null): Summary | null {
  if (summary === null) return null;
  if (
    registry !== null &&
    registry.ready === summary.ready &&
    sameList(registry.reasons, summary.reasons) &&
    sameList(registry.failing, summary.failing)
  ) {
    return null;
  }
  return summary;
}

function sameList(stored: string[] | undefined, sent: string[]): boolean {
  return stored !== undefined && stored.length === sent.length && stored.every((item, i) => item === sent[i]);
}

/** Stores a steady-state sync's summary on the instance's registry document, if it changed. */
export async function storeSummary(ctx: MutationCtx, instance: string, summary: Summary | null): Promise<void> {
  if (summary === null) return;
  const registry = await registryOf(ctx, instance);
  if (registry === null) return;
  const change = summaryChange(registry, summary);
  if (change !== null) await ctx.db.patch("sidecarInstances", registry._id, change);
}

// ---------------------------------------------------------------------------------------------
// Failing panic checks: the instance's rows, the counters, the verdicts.

/**
 * Sets the instance's failing rows to `failing` (null: unchanged) and, with `countChanges` (the
 * instance was and stays counted), moves the counters of the checks that came or went (joins and
 * leaves count the final rows: healthCounts.countInstance). Returns the rows' checks after (with
 * `failing` null, only when `joining`: a join counts them).
 */
export async function applyFailing(
  ctx: MutationCtx,
  instance: string,
  failing: string[] | null,
  until: number,
  countChanges: boolean,
  joining: boolean,
): Promise<string[]> {
  if (failing === null && !joining) return []; // unchanged, and not needed: nothing read
  const rows = await failingRowsOf(ctx, instance);
  if (failing === null) return rows.map((row) => row.check);
  const wanted = new Set(failing);
  const had = new Set(rows.map((row) => row.check));
  const removed = rows.filter((row) => !wanted.has(row.check));
  for (const row of removed) await ctx.db.delete("sidecarFailing", row._id);
  const added = failing.filter((check) => !had.has(check));
  for (const check of added) await ctx.db.insert("sidecarFailing", { check, instance, until });
  if (countChanges) {
    await countFailing(
      ctx,
      instance,
      added,
      removed.map((row) => row.check),
    );
  }
  return failing;
}

/**
 * The outage counts of the checks this instance reports failing, from the verdicts (as last
 * recounted; at least this instance until its own change is recounted), by the order sent.
 */
export async function outagesOf(ctx: Reader, failing: string[], live: number): Promise<Outage[]> {
  const outages = [];
  for (const check of failing) {
    const verdict = await verdictOf(ctx, check);
    outages.push({
      check,
      failing: Math.max(verdict?.failing ?? 0, 1),
      live: Math.max(verdict?.live ?? live, 1),
    });
  }
  return outages;
}

// ---------------------------------------------------------------------------------------------
// Shared checks: one holder probes for the fleet.

/**
 * Takes or renews the lease of each shared check the caller holds (no holder, an ended lease, or
 * its own), stores the result it sent while holding it (and the check's status when it
 * changed, for health:watch), and answers the stored results.
 */
export async function applyShared(
  ctx: MutationCtx,
  instance: string,
  checks: SharedCheck[],
  now: number,
): Promise<SharedAnswer[]> {
  const answers: SharedAnswer[] = [];
  for (const { check, fingerprint, leaseMs, result } of checks) {
    const doc = await ctx.db
      .query("sidecarShared")
      .withIndex("by_check_fingerprint", (q) => q.eq("check", check).eq("fingerprint", fingerprint))
      .first();
    const holder = doc === null || doc.leaseUntil <= now || doc.holder === instance;
    let stored = doc?.result ?? null;
    if (holder) {
      if (result !== null) {
        if (result.status !== stored?.status) await storeStatus(ctx, check, fingerprint, result.status, now);
        stored = toStored(result, now);
      }
      const lease = { holder: instance, leaseUntil: now + leaseMs, result: stored };
      if (doc === null) await ctx.db.insert("sidecarShared", { check, fingerprint, ...lease });
      else await ctx.db.patch("sidecarShared", doc._id, lease);
    }
    answers.push({ check, holder, result: stored === null ? null : toWire(check, fingerprint, stored, now) });
  }
  return answers;
}

async function storeStatus(
  ctx: MutationCtx,
  check: string,
  fingerprint: string,
  status: Doc<"sidecarSharedStatus">["status"],
  now: number,
): Promise<void> {
  const row = await ctx.db
    .query("sidecarSharedStatus")
    .withIndex("by_check_fingerprint", (q) => q.eq("check", check).eq("fingerprint", fingerprint))
    .unique();
  if (row === null) await ctx.db.insert("sidecarSharedStatus", { check, fingerprint, status, since: now });
  else if (row.status !== status) await ctx.db.patch("sidecarSharedStatus", row._id, { status, since: now });
}

// ---------------------------------------------------------------------------------------------
// Drains: requests in the heartbeat (the sync reads it anyway) and the mailbox (health:watch
// reads it), an audit row each.

/** The drain `beat` carries, as answered at `now`; null when none, or when it ended. */
export function drainOf(beat: Pick<Heartbeat, "drain">, now: number): Infer<typeof drainAnswer> {
  const drain = beat.drain;
  if (drain === undefined || (drain.until !== null && drain.until <= now)) return null;
  return {
    reason: drain.reason,
    by: drain.by,
    key: drain.key ?? null,
    ageMs: Math.max(0, now - drain.at),
    remainingMs: drain.until === null ? null : drain.until - now,
  };
}

type Target = { mailbox: Doc<"sidecarMailbox">; beat: Heartbeat };

/**
 * Drains or undrains the instances named (null: every counted one) and logs each; answers their
 * names, sorted. Every live instance: through the heartbeats' by_liveUntil index and their small
 * mailboxes (at most MAX_INSTANCES), never the registry documents with their summaries.
 */
export async function applyDrain(
  ctx: MutationCtx,
  request: DrainRequest,
  now: number,
): Promise<{ instances: string[] }> {
  const targets = request.instances === null ? await allCounted(ctx, now) : await named(ctx, request.instances, now);
  const until = request.forMs === null ? null : now + request.forMs;
  const { action, reason, by } = request;
  for (const { mailbox, beat } of targets) {
    if (request.action === "drain") {
      const drain = { reason: request.reason, by, key: "operator" as const, at: now, until };
      await ctx.db.patch("sidecarHeartbeats", beat._id, { drain });
      await ctx.db.patch("sidecarMailbox", mailbox._id, { drain });
    } else {
      if (beat.drain !== undefined) await ctx.db.patch("sidecarHeartbeats", beat._id, { drain: undefined });
      if (mailbox.drain !== undefined) await ctx.db.patch("sidecarMailbox", mailbox._id, { drain: undefined });
    }
    const row = { instance: mailbox.instance, action, reason, by, key: "operator" as const, at: now, until };
    await ctx.db.insert("sidecarDrainLog", row);
  }
  return { instances: targets.map(({ mailbox }) => mailbox.instance) };
}

async function allCounted(ctx: Reader, now: number): Promise<Target[]> {
  const beats = await ctx.db
    .query("sidecarHeartbeats")
    .withIndex("by_liveUntil", (q) => q.gt("liveUntil", now))
    .take(LIMITS.MAX_INSTANCES);
  const targets = [];
  for (const beat of beats) {
    if (beat.left === true) continue;
    const mailbox = await ctx.db
      .query("sidecarMailbox")
      .withIndex("by_heartbeat", (q) => q.eq("heartbeat", beat._id))
      .first();
    if (mailbox !== null) targets.push({ mailbox, beat });
  }
  return targets.sort((a, b) => compare(a.mailbox.instance, b.mailbox.instance));
}

/** The named instances with their live heartbeats; refuses the call when one is not live. */
async function named(ctx: Reader, instances: string[], now: number): Promise<Target[]> {
  const found = [];
  for (const instance of instances) {
    const mailbox = await mailboxOf(ctx, instance);
    const beat = mailbox === null ? null : await ctx.db.get("sidecarHeartbeats", mailbox.heartbeat);
    if (mailbox === null || beat === null || !isLive(beat, now)) {
      refuse("invalid_argument", `unknown instance: ${instance} (not live in this deployment)`);
    }
    found.push({ mailbox, beat });
  }
  return found.sort((a, b) => compare(a.mailbox.instance, b.mailbox.instance));
}

// ---------------------------------------------------------------------------------------------
// The fleet listing (a query: `now` is the caller's verified ts, never Date.now()), paged.

export const fleetAnswer = v.object({
  now: v.number(),
  instances: v.array(
    v.object({
      instance: v.string(),
      version: v.string(),
      ready: v.union(v.boolean(), v.null()),
      reasons: v.array(v.string()),
      failing: v.array(v.string()),
      seenAgeMs: v.number(),
      drain: drainAnswer,
    }),
  ),
  outages: v.array(v.object({ check: v.string(), failing: v.number(), live: v.number(), ageMs: v.number() })),
  live: v.number(), // counted instances, as last recounted
  joinsLastHour: v.number(), // new instance names registered in the last hour (rate-limited)
  continueCursor: v.string(), // the next page's cursor (body.cursor)
  isDone: v.boolean(), // no page after this one
});

/**
 * One page of the counted instances (at most FLEET_PAGE registry documents read, by name) with
 * their summary and drain, and the current outages (verdicts), the live count and the joins of
 * the last hour.
 */
export async function fleetOf(ctx: Reader, now: number, cursor: string | null): Promise<Infer<typeof fleetAnswer>> {
  const page = await ctx.db
    .query("sidecarInstances")
    .withIndex("by_instance")
    .paginate({ numItems: FLEET.FLEET_PAGE, cursor });
  const instances = [];
  for (const registry of page.page) {
    const beat = await ctx.db.get("sidecarHeartbeats", registry.heartbeat);
    if (beat === null || !counted(beat, now) || !isLive(beat, now)) continue;
    instances.push({
      instance: registry.instance,
      version: registry.version,
      ready: registry.ready ?? null,
      reasons: registry.reasons ?? [],
      failing: registry.failing ?? [],
      seenAgeMs: Math.max(0, now - beat.seenAt),
      drain: drainOf(beat, now),
    });
  }
  const verdicts = await ctx.db.query("sidecarVerdicts").take(LIMITS.PURGE_BATCH);
  const outages = verdicts
    .filter((row) => row.failing > 0)
    .map(({ check, failing, live, computedAt }) => ({ check, failing, live, ageMs: Math.max(0, now - computedAt) }))
    .sort((a, b) => compare(a.check, b.check));
  return {
    now,
    instances,
    outages,
    live: await liveCount(ctx),
    joinsLastHour: await joinsSince(ctx, now - 3_600_000),
    continueCursor: page.continueCursor,
    isDone: page.isDone,
  };
}

/** New instance names registered since `since`: at most 61 x JOIN_SHARDS bucket documents. */
async function joinsSince(ctx: Reader, since: number): Promise<number> {
  const buckets = await ctx.db
    .query("sidecarJoins")
    .withIndex("by_minute_shard", (q) => q.gte("minute", Math.floor(since / 60_000)))
    .take(61 * LIMITS.JOIN_SHARDS);
  return buckets.reduce((sum, bucket) => sum + bucket.count, 0);
}

// ---------------------------------------------------------------------------------------------
// The purge's sweep (convex/health.ts's purgeExpired): every row of every table, page by page.

/** A registry, mailbox or result row whose instance is gone (no heartbeat, or it expired). */
async function instanceGone(ctx: MutationCtx, heartbeat: Id<"sidecarHeartbeats"> | null, now: number) {
  const beat = heartbeat === null ? null : await ctx.db.get("sidecarHeartbeats", heartbeat);
  return beat === null || !isLive(beat, now);
}

async function heartbeatOfInstance(ctx: MutationCtx, instance: string) {
  return (await registryOf(ctx, instance))?.heartbeat ?? null;
}

/** For each swept table: is this row left over? (The heartbeats are purged by health.ts itself.) */
export const SWEEPERS = {
  sidecarInstances: (ctx: MutationCtx, row: Doc<"sidecarInstances">, now: number) =>
    instanceGone(ctx, row.heartbeat, now),
  sidecarMailbox: (ctx: MutationCtx, row: Doc<"sidecarMailbox">, now: number) =>
    instanceGone(ctx, row.heartbeat, now),
  sidecarResults: async (ctx: MutationCtx, row: Doc<"sidecarResults">, now: number) =>
    instanceGone(ctx, await heartbeatOfInstance(ctx, row.instance), now),
  sidecarFailing: async (ctx: MutationCtx, row: Doc<"sidecarFailing">, now: number) => {
    const heartbeat = await heartbeatOfInstance(ctx, row.instance);
    const beat = heartbeat === null ? null : await ctx.db.get("sidecarHeartbeats", heartbeat);
    // A row counts only with its counted instance: one of an uncounted one is a leftover.
    return beat === null || beat.liveUntil === undefined;
  },
  sidecarShared: async (_: MutationCtx, row: Doc<"sidecarShared">, now: number) =>
    row.leaseUntil <= now - FLEET.STALE_PURGE_AGE_MS,
  sidecarSharedStatus: async (_: MutationCtx, row: Doc<"sidecarSharedStatus">, now: number) =>
    row.since <= now - FLEET.STALE_PURGE_AGE_MS,
  sidecarNonces: async (_: MutationCtx, row: Doc<"sidecarNonces">, now: number) => row.expiresAt <= now,
  sidecarJoins: async (_: MutationCtx, row: Doc<"sidecarJoins">, now: number) =>
    row.minute < Math.floor(now / 60_000) - FLEET.JOINS_KEPT_MINUTES,
  sidecarCounters: async (_: MutationCtx, row: Doc<"sidecarCounters">) => row.value === 0 && row.key !== "live",
  sidecarCensus: async () => true, // before v3: no longer read
  sidecarPeers: (ctx: MutationCtx, row: Doc<"sidecarPeers">, now: number) => instanceGone(ctx, row.heartbeat, now),
} as const;

export type SweptTable = keyof typeof SWEEPERS;
export const SWEPT_TABLES = Object.keys(SWEEPERS) as SweptTable[];
