/**
 * Counting the fleet so that it scales and survives Convex's optimistic concurrency (plain
 * helpers; convex/health.ts defines `recount`).
 *
 * - An instance is counted while its heartbeat has `liveUntil` (its last sync's time + 2 store
 *   periods + LIVENESS_GRACE_MS). Joining adds it, leaving (its last sync) or dying takes it out.
 * - Counts live in sharded counters (sidecarCounters: "live" and "failing:<check>", shard = a
 *   hash of the instance's name): they change only on join, leave, expiry and a change of an
 *   instance's set of failing panic checks, one shard per instance, so that concurrent syncs of
 *   a large fleet rarely write the same document.
 * - The numbers everyone reads are written by one writer: `health:recount`, scheduled at once
 *   by the first change after a quiet spell (else RECOUNT_DELAY_MS after the first change that
 *   finds none pending), reads the counters and
 *   rewrites the verdicts (sidecarVerdicts, sidecarLive) only where a number changed. A
 *   fleet-wide outage is then a handful of verdict writes, however many instances fail.
 * - A dead instance (no sync before its liveUntil) is taken out by any later sync (at most one
 *   each, from the heartbeats' by_liveUntil range in the past, which no live heartbeat's patch
 *   touches) or by the recount (up to UNCOUNT_PER_RECOUNT).
 * No sync or query here scans the heartbeats or reads a number of documents that grows with the
 * fleet: a sync reads its own rows, one counter shard per change, the verdicts of its failing
 * checks and the live count.
 */
import { internal } from "./_generated/api";
import type { Doc, Id } from "./_generated/dataModel";
import type { MutationCtx, QueryCtx } from "./_generated/server";
import { LIMITS } from "./healthProtocol";

export const COUNTS = {
  SHARDS: 16,
  RECOUNT_DELAY_MS: 500, // a burst's changes share a recount this long after the first (at once after a quiet spell)
  RECOUNT_STALE_MS: 10_000, // a pending mark older than this was lost (the recount failed): ask again
  LIVENESS_GRACE_MS: 2_000, // liveUntil = the sync's time + 2 store periods + this
  UNCOUNT_PER_RECOUNT: 10, // dead instances a recount takes out, at most (each up to 2 x 200 writes)
  MAX_COUNTER_DOCS: 8_000, // counter documents a recount reads, at most (16 per key)
  MAX_VERDICTS: 500, // verdict rows a recount or health:fleet reads, at most
} as const;

type Reader = Pick<QueryCtx, "db">;
type Heartbeat = Doc<"sidecarHeartbeats">;

/** A stable shard of `n` for a name (FNV-1a over its UTF-16 units). */
export function shardOf(name: string, n: number): number {
  let hash = 0x811c9dc5;
  for (let i = 0; i < name.length; i++) hash = Math.imul(hash ^ name.charCodeAt(i), 0x01000193) >>> 0;
  return hash % n;
}

/** Counted in the fleet at `now`. */
export function counted(beat: Heartbeat, now: number): boolean {
  return beat.liveUntil !== undefined && beat.liveUntil > now;
}

/** When a sync at `now` keeps the instance counted until: 2 periods + grace, within its retention. */
export function liveUntilOf(now: number, periodMs: number | null, expiresAt: number): number {
  if (periodMs === null) return expiresAt; // a sidecar before v3: its TTL, as before
  return Math.min(now + 2 * periodMs + COUNTS.LIVENESS_GRACE_MS, expiresAt);
}

const failingKey = (check: string) => `failing:${check}`;

/** Adds `delta` to the instance's shard of `key`. */
async function bump(ctx: MutationCtx, key: string, instance: string, delta: number): Promise<void> {
  const shard = shardOf(instance, COUNTS.SHARDS);
  const doc = await ctx.db
    .query("sidecarCounters")
    .withIndex("by_key_shard", (q) => q.eq("key", key).eq("shard", shard))
    .unique();
  if (doc === null) await ctx.db.insert("sidecarCounters", { key, shard, value: delta });
  else await ctx.db.patch("sidecarCounters", doc._id, { value: doc.value + delta });
}

/** Counts an instance in (+1) or out (-1): live and each of its failing checks; asks for a recount. */
export async function countInstance(
  ctx: MutationCtx,
  instance: string,
  failing: Iterable<string>,
  sign: 1 | -1,
): Promise<void> {
  await bump(ctx, "live", instance, sign);
  for (const check of failing) await bump(ctx, failingKey(check), instance, sign);
  await requestRecount(ctx);
}

/** A counted instance's failing checks changed: one shard of each check that came or went. */
export async function countFailing(
  ctx: MutationCtx,
  instance: string,
  added: string[],
  removed: string[],
): Promise<void> {
  for (const check of added) await bump(ctx, failingKey(check), instance, 1);
  for (const check of removed) await bump(ctx, failingKey(check), instance, -1);
  if (added.length + removed.length > 0) await requestRecount(ctx);
}

/**
 * Schedules `health:recount` unless one is pending (the mark is one tiny document: the writers
 * of a burst read it, the first one writes it). A mark older than RECOUNT_STALE_MS is ignored:
 * its recount failed. After a quiet spell (the last recount, the mark's `at` once it is no
 * longer pending, ran RECOUNT_DELAY_MS ago or more) the recount runs at once: the first failure
 * of an outage, and the others' confirmations a fast interval later, reach the verdict without
 * waiting; a burst's later changes wait RECOUNT_DELAY_MS and share one recount.
 */
export async function requestRecount(ctx: MutationCtx): Promise<void> {
  const now = Date.now();
  const mark = await ctx.db.query("sidecarRecount").first();
  if (mark !== null && mark.pending && mark.at > now - COUNTS.RECOUNT_STALE_MS) return;
  const quiet = mark === null || mark.pending || mark.at <= now - COUNTS.RECOUNT_DELAY_MS;
  if (mark === null) await ctx.db.insert("sidecarRecount", { pending: true, at: now });
  else await ctx.db.patch("sidecarRecount", mark._id, { pending: true, at: now });
  await ctx.scheduler.runAfter(quiet ? 0 : COUNTS.RECOUNT_DELAY_MS, internal.health.recount, {});
}

/** The failing rows of an instance (at most MAX_CHECKS). */
export function failingRowsOf(ctx: Reader, instance: string) {
  return ctx.db
    .query("sidecarFailing")
    .withIndex("by_instance_check", (q) => q.eq("instance", instance))
    .take(LIMITS.MAX_CHECKS);
}

/** The instance a heartbeat belongs to (its mailbox names it), or null for an orphan. */
export async function instanceOf(ctx: Reader, heartbeat: Id<"sidecarHeartbeats">): Promise<string | null> {
  const mailbox = await ctx.db
    .query("sidecarMailbox")
    .withIndex("by_heartbeat", (q) => q.eq("heartbeat", heartbeat))
    .first();
  return mailbox?.instance ?? null;
}

/**
 * Takes a counted instance out of the counts: its liveUntil goes, its failing rows are deleted
 * and their counters decremented. Returns the documents it wrote (deleted or patched).
 */
export async function uncount(ctx: MutationCtx, beat: Heartbeat, recount = true): Promise<number> {
  if (beat.liveUntil === undefined) return 0;
  await ctx.db.patch("sidecarHeartbeats", beat._id, { liveUntil: undefined });
  const instance = await instanceOf(ctx, beat._id);
  if (instance === null) return 1; // an orphan: nothing else of it is counted under a name
  const rows = await failingRowsOf(ctx, instance);
  for (const row of rows) await ctx.db.delete("sidecarFailing", row._id);
  await bump(ctx, "live", instance, -1);
  for (const row of rows) await bump(ctx, failingKey(row.check), instance, -1);
  if (recount) await requestRecount(ctx);
  return 1 + 2 * rows.length + 1; // the heartbeat, the rows, their counters and the live one
}

/** The first counted heartbeat whose liveUntil passed (dead without a last sync), or null. */
export function firstDead(ctx: Reader, now: number) {
  return ctx.db
    .query("sidecarHeartbeats")
    .withIndex("by_liveUntil", (q) => q.gte("liveUntil", 0).lte("liveUntil", now))
    .first();
}

/** The live count as last recounted (0 before the first recount). */
export async function liveCount(ctx: Reader): Promise<number> {
  return (await ctx.db.query("sidecarLive").first())?.live ?? 0;
}

export function verdictOf(ctx: Reader, check: string) {
  return ctx.db
    .query("sidecarVerdicts")
    .withIndex("by_check", (q) => q.eq("check", check))
    .unique();
}

/**
 * The recount's work (health:recount): dead instances out, then the counters summed and the
 * verdicts rewritten where a number changed (a verdict whose count fell to 0 is deleted: no row,
 * nothing failing). Returns whether dead instances may remain (then it asks for another).
 */
export async function recount(ctx: MutationCtx, now: number): Promise<{ changed: number; more: boolean }> {
  const mark = await ctx.db.query("sidecarRecount").first();
  // Not pending any more; `at` now says when the last recount ran (requestRecount's quiet spell).
  if (mark !== null) await ctx.db.patch("sidecarRecount", mark._id, { pending: false, at: now });
  const dead = await ctx.db
    .query("sidecarHeartbeats")
    .withIndex("by_liveUntil", (q) => q.gte("liveUntil", 0).lte("liveUntil", now))
    .take(COUNTS.UNCOUNT_PER_RECOUNT);
  for (const beat of dead) await uncount(ctx, beat, false);

  const sums = new Map<string, number>();
  for (const doc of await ctx.db.query("sidecarCounters").take(COUNTS.MAX_COUNTER_DOCS)) {
    sums.set(doc.key, (sums.get(doc.key) ?? 0) + doc.value);
    if (doc.value === 0 && doc.key !== "live") await ctx.db.delete("sidecarCounters", doc._id);
  }
  let changed = 0;
  const live = Math.max(0, sums.get("live") ?? 0);
  const liveDoc = await ctx.db.query("sidecarLive").first();
  if (liveDoc === null) await ctx.db.insert("sidecarLive", { live });
  else if (liveDoc.live !== live) await ctx.db.patch("sidecarLive", liveDoc._id, { live });
  if (liveDoc?.live !== live) changed += 1;

  const verdicts = new Map(
    (await ctx.db.query("sidecarVerdicts").take(COUNTS.MAX_VERDICTS)).map((row) => [row.check, row]),
  );
  for (const [key, sum] of sums) {
    if (!key.startsWith("failing:")) continue;
    const check = key.slice("failing:".length);
    const failing = Math.max(0, sum);
    const row = verdicts.get(check);
    verdicts.delete(check);
    if (row === undefined) {
      if (failing === 0) continue;
      await ctx.db.insert("sidecarVerdicts", { check, failing, live, since: now, computedAt: now });
    } else if (failing === 0) {
      await ctx.db.delete("sidecarVerdicts", row._id);
    } else if (row.failing !== failing || row.live !== live) {
      const since = row.failing === failing ? row.since : now;
      await ctx.db.patch("sidecarVerdicts", row._id, { failing, live, since, computedAt: now });
    } else continue;
    changed += 1;
  }
  // Verdicts with no counter left (every shard of the check gone): nothing fails there.
  for (const row of verdicts.values()) {
    await ctx.db.delete("sidecarVerdicts", row._id);
    changed += 1;
  }
  const more = dead.length === COUNTS.UNCOUNT_PER_RECOUNT;
  if (more) await requestRecount(ctx);
  return { changed, more };
}
