/**
 * The fleet side of health-sidecar's store (convex/health.ts defines the functions; these are
 * plain helpers): the summary an instance keeps on its registry document, shared-outage counts
 * (sidecarFailing rows and the sidecarCensus), shared checks (sidecarShared leases), drain
 * requests (the heartbeat as mailbox, sidecarDrainLog as audit trail), the fleet listing, and
 * the purge of what the fleet leaves behind.
 *
 * Costs: none of this runs in a steady-state sync without the fleet keys. A sync with `panic`
 * reads the instance's own sidecarFailing rows (an empty index range when there are none) and,
 * per failing check, upserts its row and reads the census, patching it only when the count
 * changes; every CENSUS_MAX_AGE_MS at most, per check, a sync recounts it (a scan of the
 * heartbeats and of the check's failing rows).
 */
import { v, type Infer } from "convex/values";
import type { Doc } from "./_generated/dataModel";
import type { MutationCtx, QueryCtx } from "./_generated/server";
import {
  LIMITS,
  refuse,
  toStored,
  toWire,
  wireResult,
  type DrainRequest,
  type Panic,
  type SharedCheck,
  type Summary,
} from "./healthProtocol";

/** How the fleet features use time (ms); server behaviour, not bounds of the protocol. */
export const FLEET = {
  CENSUS_MAX_AGE_MS: 15_000, // a census older than this is recounted by the next failing sync
  OUTAGE_WINDOW_MS: 60_000, // health:fleet lists the census rows computed within this window
  FAILING_PURGE_AGE_MS: 3_600_000, // the purge deletes failing rows expired for longer
  STALE_PURGE_AGE_MS: 86_400_000, // ... census rows computed, and shared leases ended, longer ago
} as const;

type Reader = Pick<QueryCtx, "db">;
type Registry = Doc<"sidecarInstances">;
type Heartbeat = Doc<"sidecarHeartbeats">;
type FailingRow = Doc<"sidecarFailing">;
type Census = Doc<"sidecarCensus">;

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

/** A stable shard of `n` for a name (FNV-1a over its UTF-16 units). */
export function shardOf(name: string, n: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return hash % n;
}
export const outageAnswer = v.object({ check: v.string(), failing: v.number(), live: v.number() });
export const sharedAnswer = v.object({ check: v.string(), holder: v.boolean(), result: v.union(wireResult, v.null()) });
type Outage = Infer<typeof outageAnswer>;
type SharedAnswer = Infer<typeof sharedAnswer>;

// ---------------------------------------------------------------------------------------------
// Liveness.

/** Unexpired: the instance's documents are intact (its warm start may use them). */
export function isLive(beat: Heartbeat, now: number): boolean {
  return beat.expiresAt > now;
}

/** Counted in the fleet: unexpired, and not left (stopped after a last sync). */
export function inFleet(beat: Heartbeat, now: number): boolean {
  return isLive(beat, now) && beat.left !== true;
}

/** The heartbeats in the fleet, counted by a scan (the table has no index), stopping at MAX_INSTANCES. */
export async function countLive(ctx: Reader, now: number): Promise<number> {
  let live = 0;
  for await (const beat of ctx.db.query("sidecarHeartbeats")) {
    if (inFleet(beat, now) && ++live >= LIMITS.MAX_INSTANCES) break;
  }
  return live;
}

export function registryOf(ctx: Reader, instance: string) {
  return ctx.db
    .query("sidecarInstances")
    .withIndex("by_instance", (q) => q.eq("instance", instance))
    .unique();
}

/** The registry documents whose heartbeat is live at `now`, with it; at most MAX_INSTANCES. */
async function liveInstances(ctx: Reader, now: number): Promise<Array<{ registry: Registry; beat: Heartbeat }>> {
  const live = [];
  for await (const registry of ctx.db.query("sidecarInstances")) {
    const beat = await ctx.db.get("sidecarHeartbeats", registry.heartbeat);
    if (beat !== null && inFleet(beat, now)) live.push({ registry, beat });
    if (live.length >= LIMITS.MAX_INSTANCES) break;
  }
  return live.sort((a, b) => compare(a.registry.instance, b.registry.instance));
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
  // No registry document: a caller signing with another instance's heartbeat; nothing to attach it to.
  if (registry === null) return;
  const change = summaryChange(registry, summary);
  if (change !== null) await ctx.db.patch("sidecarInstances", registry._id, change);
}

// ---------------------------------------------------------------------------------------------
// Shared outages: sidecarFailing rows and the census.

function failingRowsOf(ctx: Reader, instance: string) {
  return ctx.db.query("sidecarFailing").withIndex("by_instance_check", (q) => q.eq("instance", instance));
}

function censusOf(ctx: Reader, check: string): Promise<Census | null> {
  return ctx.db
    .query("sidecarCensus")
    .withIndex("by_check", (q) => q.eq("check", check))
    .first();
}

/**
 * Whether `census` counts `row`. A recount counts the rows with `until > computedAt`; each later
 * change keeps that true (a new or revived row adds one, a deleted counted row takes one away),
 * so a census is exact but for the rows that expired since its recount.
 */
function counts(census: Census, row: FailingRow | null): boolean {
  return row !== null && row.until > census.computedAt;
}

/**
 * Refreshes the instance's failing rows to `panic.failing` (upserts with until = now + holdMs,
 * deletes the others) and answers the outage count of every check listed.
 */
export async function applyPanic(
  ctx: MutationCtx,
  instance: string,
  panic: Panic | null,
  now: number,
): Promise<Outage[]> {
  if (panic === null) return [];
  const rows = new Map((await failingRowsOf(ctx, instance).take(LIMITS.MAX_CHECKS)).map((row) => [row.check, row]));
  const failing = new Set(panic.failing);
  for (const [check, row] of rows) {
    if (failing.has(check)) continue;
    await ctx.db.delete("sidecarFailing", row._id);
    const census = await censusOf(ctx, check);
    if (census !== null && counts(census, row)) {
      await ctx.db.patch("sidecarCensus", census._id, { failing: Math.max(0, census.failing - 1) });
    }
  }
  const until = now + panic.holdMs;
  const outages: Outage[] = [];
  for (const check of panic.failing) {
    const row = rows.get(check) ?? null;
    if (row === null) await ctx.db.insert("sidecarFailing", { check, instance, until });
    else await ctx.db.patch("sidecarFailing", row._id, { until });
    outages.push(await countOutage(ctx, check, row, now));
  }
  return outages;
}

/** The census of `check` after this instance's row was upserted (`before`: the row as it was). */
async function countOutage(ctx: MutationCtx, check: string, before: FailingRow | null, now: number): Promise<Outage> {
  const census = await censusOf(ctx, check);
  // Recount when the census is old, was voided (an instance joined or left), or cannot be
  // right (more failing than live: a dead instance's row still counted).
  if (census === null || census.computedAt < now - FLEET.CENSUS_MAX_AGE_MS || census.failing > census.live) {
    const counted = { failing: await countFailing(ctx, check, now), live: await countLive(ctx, now), computedAt: now };
    if (census === null) await ctx.db.insert("sidecarCensus", { check, ...counted });
    else await ctx.db.patch("sidecarCensus", census._id, counted);
    return { check, failing: counted.failing, live: counted.live };
  }
  if (counts(census, before)) return { check, failing: census.failing, live: census.live };
  await ctx.db.patch("sidecarCensus", census._id, { failing: census.failing + 1 });
  return { check, failing: census.failing + 1, live: census.live };
}

/**
 * Voids every census (the next failing sync of each check recounts it): called when an instance
 * joins the fleet or leaves it, which changes `live` at once. The census table holds one row per
 * panic check that failed lately, so this reads a handful of documents, on joins and leaves only.
 */
export async function voidCensus(ctx: MutationCtx): Promise<void> {
  for (const census of await ctx.db.query("sidecarCensus").take(LIMITS.PURGE_BATCH)) {
    if (census.computedAt !== 0) await ctx.db.patch("sidecarCensus", census._id, { computedAt: 0 });
  }
}

async function countFailing(ctx: Reader, check: string, now: number): Promise<number> {
  const rows = await ctx.db
    .query("sidecarFailing")
    .withIndex("by_check_until", (q) => q.eq("check", check).gt("until", now))
    .take(LIMITS.MAX_INSTANCES);
  return rows.length;
}

// ---------------------------------------------------------------------------------------------
// Shared checks: one holder probes for the fleet.

/**
 * Takes or renews the lease of each shared check the caller holds (no holder, an ended lease, or
 * its own), stores the result it sent while holding it, and answers the stored results.
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
      if (result !== null) stored = toStored(result, now);
      const lease = { holder: instance, leaseUntil: now + leaseMs, result: stored };
      if (doc === null) await ctx.db.insert("sidecarShared", { check, fingerprint, ...lease });
      else await ctx.db.patch("sidecarShared", doc._id, lease);
    }
    answers.push({ check, holder, result: stored === null ? null : toWire(check, fingerprint, stored, now) });
  }
  return answers;
}

// ---------------------------------------------------------------------------------------------
// Drains: requests in the heartbeat (the mailbox every sync reads anyway), an audit row each.

/** The drain `beat` carries, as answered at `now`; null when none, or when it ended. */
export function drainOf(beat: Heartbeat, now: number): Infer<typeof drainAnswer> {
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

/** Drains or undrains the instances named (null: every live one) and logs each; answers their names, sorted. */
export async function applyDrain(
  ctx: MutationCtx,
  request: DrainRequest,
  now: number,
): Promise<{ instances: string[] }> {
  const targets = request.instances === null ? await liveInstances(ctx, now) : await named(ctx, request.instances, now);
  const until = request.forMs === null ? null : now + request.forMs;
  const { action, reason, by } = request;
  for (const { registry, beat } of targets) {
    if (request.action === "drain") {
      const drain = { reason: request.reason, by, key: "operator" as const, at: now, until };
      await ctx.db.patch("sidecarHeartbeats", beat._id, { drain });
    } else if (beat.drain !== undefined) {
      await ctx.db.patch("sidecarHeartbeats", beat._id, { drain: undefined });
    }
    const row = { instance: registry.instance, action, reason, by, key: "operator" as const, at: now, until };
    await ctx.db.insert("sidecarDrainLog", row);
  }
  return { instances: targets.map(({ registry }) => registry.instance) };
}

/** The named instances with their live heartbeats; refuses the call when one is not live. */
async function named(ctx: Reader, instances: string[], now: number) {
  const found = [];
  for (const instance of instances) {
    const registry = await registryOf(ctx, instance);
    const beat = registry === null ? null : await ctx.db.get("sidecarHeartbeats", registry.heartbeat);
    if (registry === null || beat === null || !isLive(beat, now)) {
      refuse("invalid_argument", `unknown instance: ${instance} (not live in this deployment)`);
    }
    found.push({ registry, beat });
  }
  return found.sort((a, b) => compare(a.registry.instance, b.registry.instance));
}

// ---------------------------------------------------------------------------------------------
// The fleet listing (a query: `now` is the caller's verified ts, never Date.now()).

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
  joinsLastHour: v.number(), // new instance names registered in the last hour (rate-limited)
});

/** Every live instance with its summary and drain, by name, and the outage counts of the last minute, by check. */
export async function fleetOf(ctx: Reader, now: number): Promise<Infer<typeof fleetAnswer>> {
  const instances = (await liveInstances(ctx, now)).map(({ registry, beat }) => ({
    instance: registry.instance,
    version: registry.version,
    ready: registry.ready ?? null,
    reasons: registry.reasons ?? [],
    failing: registry.failing ?? [],
    seenAgeMs: Math.max(0, now - beat.seenAt),
    drain: drainOf(beat, now),
  }));
  const outages = [];
  for await (const census of ctx.db.query("sidecarCensus")) {
    if (census.computedAt < now - FLEET.OUTAGE_WINDOW_MS) continue;
    const { check, failing, live, computedAt } = census;
    outages.push({ check, failing, live, ageMs: Math.max(0, now - computedAt) });
  }
  return {
    now,
    instances,
    outages: outages.sort((a, b) => compare(a.check, b.check)),
    joinsLastHour: await joinsSince(ctx, now - 3_600_000),
  };
}

/** New instance names registered since `since`: at most 60 x JOIN_SHARDS bucket documents. */
async function joinsSince(ctx: Reader, since: number): Promise<number> {
  const buckets = await ctx.db
    .query("sidecarJoins")
    .withIndex("by_minute_shard", (q) => q.gte("minute", Math.floor(since / 60_000)))
    .take(61 * LIMITS.JOIN_SHARDS);
  return buckets.reduce((sum, bucket) => sum + bucket.count, 0);
}

// ---------------------------------------------------------------------------------------------
// The purge (convex/health.ts's purgeExpired): never the drain log.

/** Deletes up to `budget` of an instance's failing rows (its heartbeat is being purged); returns how many. */
export async function purgeFailingOf(ctx: MutationCtx, instance: string, budget: number): Promise<number> {
  if (budget === 0) return 0;
  const rows = await failingRowsOf(ctx, instance).take(budget);
  for (const row of rows) await ctx.db.delete("sidecarFailing", row._id);
  return rows.length;
}

/**
 * Deletes failing rows expired for over an hour, census rows computed and shared leases ended over
 * a day ago, within `budget` deletions; returns what is left of the budget. The census and shared
 * tables hold one row per check (per definition), so each is read whole, up to PURGE_BATCH rows.
 */
export async function sweepFleet(ctx: MutationCtx, now: number, budget: number): Promise<number> {
  budget = await sweepFailing(ctx, now - FLEET.FAILING_PURGE_AGE_MS, budget);
  // Spent nonces past their window, and join buckets over two hours old: both by index, oldest first.
  const nonces = await ctx.db
    .query("sidecarNonces")
    .withIndex("by_expiresAt", (q) => q.lt("expiresAt", now))
    .take(budget);
  for (const nonce of nonces) await ctx.db.delete("sidecarNonces", nonce._id);
  budget -= nonces.length;
  const joins = await ctx.db
    .query("sidecarJoins")
    .withIndex("by_minute_shard", (q) => q.lt("minute", Math.floor(now / 60_000) - 120))
    .take(budget);
  for (const bucket of joins) await ctx.db.delete("sidecarJoins", bucket._id);
  budget -= joins.length;
  if (budget === 0) return 0;
  const stale = now - FLEET.STALE_PURGE_AGE_MS;
  for (const census of await ctx.db.query("sidecarCensus").take(LIMITS.PURGE_BATCH)) {
    if (budget === 0) return 0;
    if (census.computedAt > stale) continue;
    await ctx.db.delete("sidecarCensus", census._id);
    budget -= 1;
  }
  for (const shared of await ctx.db.query("sidecarShared").take(LIMITS.PURGE_BATCH)) {
    if (budget === 0) return 0;
    if (shared.leaseUntil > stale) continue;
    await ctx.db.delete("sidecarShared", shared._id);
    budget -= 1;
  }
  return budget;
}

/**
 * Deletes failing rows with until <= cutoff, check by check through by_check_until: the first row
 * of each check is its oldest, so a check with nothing to delete costs one read.
 */
async function sweepFailing(ctx: MutationCtx, cutoff: number, budget: number): Promise<number> {
  let previous: string | null = null;
  for (let checks = 0; budget > 0 && checks < LIMITS.PURGE_BATCH; checks++) {
    const after: string | null = previous;
    const oldest: FailingRow | null = await ctx.db
      .query("sidecarFailing")
      .withIndex("by_check_until", (q) => (after === null ? q : q.gt("check", after)))
      .first();
    if (oldest === null) break;
    previous = oldest.check;
    if (oldest.until > cutoff) continue;
    const expired = await ctx.db
      .query("sidecarFailing")
      .withIndex("by_check_until", (q) => q.eq("check", oldest.check).lte("until", cutoff))
      .take(budget);
    for (const row of expired) await ctx.db.delete("sidecarFailing", row._id);
    budget -= expired.length;
  }
  return budget;
}
