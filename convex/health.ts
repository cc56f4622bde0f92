/**
 * health-sidecar's store, protocol v1 with the fleet additions. docs/convex.md explains the
 * tables, the budget and how to deploy or merge these functions.
 * Helpers live beside this module: healthProtocol.ts (limits, signed calls, strict parse of the
 * bodies), healthFleet.ts (summary, outage counts, shared checks, drains, the fleet listing),
 * healthTables.ts (the tables).
 *
 * - `sync` (public mutation) is the only call an instance makes: once per store period, and
 *   promptly when a status changes. In steady state it reads and patches the instance's
 *   heartbeat document by the id the previous answer gave, and writes the results that changed;
 *   after a restart (`hello`), or when that heartbeat is gone or expired, it registers the
 *   instance by name, and on `hello` prunes the rows of checks that are gone and answers the
 *   warm start. Its answer carries the fleet digest: the drain request in the heartbeat, and,
 *   only when the body asks with `panic` or `shared`, outage counts and shared checks.
 * - `drain` (public mutation, signed) drains or undrains instances, with an audit row each.
 * - `fleet` (public query, signed) lists the live instances and the outages of the last minute.
 * - `ping` (public query) reads nothing: any answer proves the deployment's runtime runs.
 * - `purgeExpired` (internal mutation, hourly in crons.ts) deletes expired heartbeats, their
 *   instances and rows, and what the fleet features leave behind, in bounded batches.
 *
 * Each signed function: bounds, signature over its own path, timestamp, strict body, then the
 * work (healthProtocol.ts); every refusal is a ConvexError {code, message} and changes nothing.
 */
import { v, type Infer } from "convex/values";
import type { WithoutSystemFields } from "convex/server";
import { internal } from "./_generated/api";
import type { Doc, Id } from "./_generated/dataModel";
import { internalMutation, mutation, query, type MutationCtx } from "./_generated/server";
import {
  applyDrain,
  applyPanic,
  applyShared,
  countLive,
  inFleet,
  drainAnswer,
  drainOf,
  fleetAnswer,
  fleetOf,
  isLive,
  voidCensus,
  outageAnswer,
  purgeFailingOf,
  registryOf,
  shardOf,
  sharedAnswer,
  storeSummary,
  summaryChange,
  sweepFleet,
} from "./healthFleet";
import {
  LIMITS,
  FIELD_LIMITS,
  authenticate,
  parseDrainRequest,
  parseFleetRequest,
  parseSyncPayload,
  refuse,
  signedArgs,
  toStored,
  toWire,
  wireResult,
  type Summary,
  type SyncPayload,
  type WireResult,
} from "./healthProtocol";

const SYNC_PATH = "health:sync";
const DRAIN_PATH = "health:drain";
const FLEET_PATH = "health:fleet";

// ---------------------------------------------------------------------------------------------
// The sync's work, with the server's clock.

type Registry = Doc<"sidecarInstances">;
type Heartbeat = Doc<"sidecarHeartbeats">;
type Row = Doc<"sidecarResults">;
type Warm = SyncAnswer["warm"];

const syncAnswer = v.object({
  now: v.number(),
  expiresAt: v.number(),
  heartbeat: v.id("sidecarHeartbeats"),
  token: v.union(v.string(), v.null()), // a hello's answer only: the token later syncs present
  written: v.number(),
  resend: v.boolean(),
  warm: v.union(v.null(), v.object({ confirmedAgeMs: v.number(), results: v.array(wireResult) })),
  outages: v.array(outageAnswer),
  shared: v.array(sharedAnswer),
  drain: drainAnswer,
});
type SyncAnswer = Infer<typeof syncAnswer>;
type Synced = Pick<SyncAnswer, "heartbeat" | "token" | "resend" | "warm" | "drain">;
type SignedCall = { instance: string; ts: number };

const TOKEN_MISMATCH = "this instance's token does not match: send hello";

async function applySync(ctx: MutationCtx, call: SignedCall, payload: SyncPayload, now: number): Promise<SyncAnswer> {
  const { instance } = call;
  const renewed: Renewal = {
    seenAt: now,
    expiresAt: now + payload.ttlMs,
    left: payload.leaving ? (true as const) : undefined,
    lastTs: call.ts,
  };
  const synced =
    payload.hello === null
      ? await steadyState(ctx, call, payload, renewed)
      : await registration(ctx, call, payload, renewed);
  // The fleet digest, asked for by the body only: a sync without these keys touches nothing more.
  // Leaving, the instance's failing rows go too (it no longer counts), and every census is
  // recounted without it.
  if (payload.leaving) await voidCensus(ctx);
  const panic = payload.leaving ? { failing: [], holdMs: FIELD_LIMITS.MIN_HOLD_MS } : payload.panic;
  const outages = await applyPanic(ctx, instance, panic, now);
  const shared = await applyShared(ctx, instance, payload.shared, now);
  return { now, expiresAt: renewed.expiresAt, written: payload.results.length, ...synced, outages, shared };
}

/**
 * The steady state: one get and one patch of a small document, by id. The caller must hold the
 * heartbeat: the token its hello answered, hashed with its name, is the one stored there (so a
 * sync can touch only its own instance's documents), and its `ts` is newer than the last one
 * accepted (so a replay is refused). A heartbeat that is unknown, purged or expired, or a token
 * that does not match, is refused `unauthorized`: the sidecar sends hello again.
 */
async function steadyState(
  ctx: MutationCtx,
  { instance, ts }: SignedCall,
  payload: SyncPayload,
  renewed: Renewal,
): Promise<Synced> {
  const beat = await heartbeatOf(ctx, payload.heartbeat);
  if (
    beat === null ||
    !isLive(beat, renewed.seenAt) ||
    payload.token === null ||
    beat.tokenHash !== (await tokenHash(instance, payload.token))
  ) {
    refuse("unauthorized", TOKEN_MISMATCH);
  }
  checkNewer(beat, ts);
  await writeResults(ctx, instance, payload.results, renewed.seenAt, null);
  await renew(ctx, beat, renewed);
  await storeSummary(ctx, instance, payload.summary);
  return { heartbeat: beat._id, token: null, resend: false, warm: null, drain: drainOf(beat, renewed.seenAt) };
}

/**
 * `hello`: registers the instance by name, taking the name over (a restarted container holds no
 * token: the fleet key is per fleet, not per instance), with a new token. A name new to the
 * deployment is rate-limited (JOINS_PER_MINUTE).
 */
async function registration(
  ctx: MutationCtx,
  { instance, ts }: SignedCall,
  payload: SyncPayload,
  renewed: Renewal,
): Promise<Synced> {
  const now = renewed.seenAt;
  const registry = await registryOf(ctx, instance);
  const previous = registry ? await ctx.db.get("sidecarHeartbeats", registry.heartbeat) : null;
  if (previous !== null) checkNewer(previous, ts);
  if (registry === null) await admitName(ctx, instance, now);
  // An expired heartbeat is as good as purged: its instance's rows may be half deleted already.
  const live = previous !== null && isLive(previous, now);
  if (previous === null || !inFleet(previous, now)) {
    await admitInstance(ctx, now);
    await voidCensus(ctx); // one more instance in the fleet: recount
  }
  const kept = payload.hello ? await pruneRows(ctx, instance, payload.hello) : null;
  const warm = kept && live ? warmAnswer(kept, previous, now) : null;
  await writeResults(ctx, instance, payload.results, now, kept?.length ?? null);
  const token = newToken();
  const beat = { ...renewed, tokenHash: await tokenHash(instance, token) };
  const heartbeat =
    previous === null ? await ctx.db.insert("sidecarHeartbeats", beat) : await renew(ctx, previous, beat);
  await register(ctx, registry, { instance, version: payload.version, heartbeat }, payload.summary);
  const drain = previous === null ? null : drainOf(previous, now);
  return { heartbeat, token, resend: false, warm, drain };
}

type Renewal = {
  seenAt: number;
  expiresAt: number;
  left: true | undefined;
  lastTs: number;
  tokenHash?: string;
};

/** Refuses a sync whose `ts` is not newer than the last one accepted for the instance: a replay. */
function checkNewer(beat: Heartbeat, ts: number): void {
  if (beat.lastTs !== undefined && ts <= beat.lastTs) {
    refuse(
      "replayed",
      "ts is not newer than this instance's last accepted sync: a replay, or two sidecars under one name",
    );
  }
}

/** 32 random bytes as 64 lowercase hex: returned once, stored only as a hash. */
function newToken(): string {
  return toHex(crypto.getRandomValues(new Uint8Array(32)));
}

/** The first 32 hex characters of SHA-256(instance + "\n" + token): binds the token to the name. */
async function tokenHash(instance: string, token: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(`${instance}\n${token}`));
  return toHex(new Uint8Array(digest)).slice(0, 32);
}

function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/**
 * Counts a new instance name in its minute's bucket (one of JOIN_SHARDS, by a hash of the name,
 * so that a rolling restart's registrations rarely write the same document), and refuses it
 * `rate_limited` when the bucket is full: about JOINS_PER_MINUTE a minute deployment-wide.
 */
async function admitName(ctx: MutationCtx, instance: string, now: number): Promise<void> {
  const minute = Math.floor(now / 60_000);
  const shard = shardOf(instance, LIMITS.JOIN_SHARDS);
  const bucket = await ctx.db
    .query("sidecarJoins")
    .withIndex("by_minute_shard", (q) => q.eq("minute", minute).eq("shard", shard))
    .unique();
  if (bucket !== null && bucket.count >= JOINS_PER_SHARD) {
    const wait = Math.ceil(((minute + 1) * 60_000 - now) / 1000);
    refuse(
      "rate_limited",
      `too many new instance names this minute (about ${LIMITS.JOINS_PER_MINUTE} a minute): try again in ${wait} s`,
    );
  }
  if (bucket === null) await ctx.db.insert("sidecarJoins", { minute, shard, count: 1 });
  else await ctx.db.patch("sidecarJoins", bucket._id, { count: bucket.count + 1 });
}

const JOINS_PER_SHARD = Math.ceil(LIMITS.JOINS_PER_MINUTE / LIMITS.JOIN_SHARDS);

/** Patches a heartbeat's seenAt, expiresAt and lastTs; a drain that ended leaves the mailbox in the same patch. */
async function renew(ctx: MutationCtx, beat: Heartbeat, renewed: Renewal): Promise<Id<"sidecarHeartbeats">> {
  const ended = beat.drain !== undefined && drainOf(beat, renewed.seenAt) === null;
  await ctx.db.patch("sidecarHeartbeats", beat._id, ended ? { ...renewed, drain: undefined } : renewed);
  return beat._id;
}

/** The heartbeat the caller names, or null when the id is absent, not a heartbeat's, or deleted. */
async function heartbeatOf(ctx: MutationCtx, id: string | null): Promise<Heartbeat | null> {
  const normalized = id === null ? null : ctx.db.normalizeId("sidecarHeartbeats", id);
  return normalized === null ? null : await ctx.db.get("sidecarHeartbeats", normalized);
}

/** The rows `hello` kept, aged by the server's clock; all were current at the previous sync. */
function warmAnswer(kept: Row[], previous: Heartbeat, now: number): Warm {
  return {
    confirmedAgeMs: now - previous.seenAt,
    results: kept.map((row) => toWire(row.check, row.fingerprint, row, now)),
  };
}

/** Inserts the registry document, or patches it when its version, heartbeat or summary changed. */
async function register(
  ctx: MutationCtx,
  registry: Registry | null,
  wanted: Pick<Registry, "instance" | "version" | "heartbeat">,
  summary: Summary | null,
): Promise<void> {
  const change = summaryChange(registry, summary);
  if (registry === null) await ctx.db.insert("sidecarInstances", { ...wanted, ...change });
  else if (registry.version !== wanted.version || registry.heartbeat !== wanted.heartbeat || change !== null) {
    await ctx.db.patch("sidecarInstances", registry._id, {
      version: wanted.version,
      heartbeat: wanted.heartbeat,
      ...change,
    });
  }
}

/**
 * Refuses a new (or revived) instance when MAX_INSTANCES live heartbeats exist. The heartbeats
 * have no index (it would cost every steady-state sync its entry), so this scans them, stopping
 * at MAX_INSTANCES live ones; it runs only when an instance is not live.
 */
async function admitInstance(ctx: MutationCtx, now: number): Promise<void> {
  if ((await countLive(ctx, now)) >= LIMITS.MAX_INSTANCES) {
    refuse("limit_exceeded", `the deployment already has ${LIMITS.MAX_INSTANCES} live instances`);
  }
}

function rowsOf(ctx: MutationCtx, instance: string, check?: string) {
  return ctx.db
    .query("sidecarResults")
    .withIndex("by_instance_check", (q) =>
      check === undefined ? q.eq("instance", instance) : q.eq("instance", instance).eq("check", check),
    );
}

/** Deletes the instance's rows whose check is not in `hello` or has another fingerprint; returns the others, by check. */
async function pruneRows(ctx: MutationCtx, instance: string, hello: Map<string, string>): Promise<Row[]> {
  const kept: Row[] = [];
  for (const row of await rowsOf(ctx, instance).take(LIMITS.MAX_CHECKS + 1)) {
    if (hello.get(row.check) === row.fingerprint) kept.push(row);
    else await ctx.db.delete("sidecarResults", row._id);
  }
  return kept;
}

/** Upserts one row per result; `rowCount` is the instance's row count when already known. */
async function writeResults(
  ctx: MutationCtx,
  instance: string,
  results: WireResult[],
  now: number,
  rowCount: number | null,
): Promise<void> {
  let rows = rowCount;
  for (const result of results) {
    const row: WithoutSystemFields<Row> = {
      instance,
      check: result.check,
      fingerprint: result.fingerprint,
      ...toStored(result, now),
    };
    const current = await rowsOf(ctx, instance, result.check).unique();
    if (current) {
      await ctx.db.replace("sidecarResults", current._id, row);
      continue;
    }
    rows ??= (await rowsOf(ctx, instance).take(LIMITS.MAX_CHECKS)).length;
    if (rows >= LIMITS.MAX_CHECKS) refuse("limit_exceeded", `an instance keeps at most ${LIMITS.MAX_CHECKS} checks`);
    await ctx.db.insert("sidecarResults", row);
    rows += 1;
  }
}

// ---------------------------------------------------------------------------------------------
// The functions.

/** An instance's one call per store period: liveness, changed results, the warm start, the fleet digest. */
export const sync = mutation({
  args: signedArgs,
  returns: syncAnswer,
  handler: async (ctx, call) => {
    await authenticate(SYNC_PATH, call, "fleet");
    const payload = parseSyncPayload(call.body);
    return await applySync(ctx, call, payload, Date.now());
  },
});

/** Drains or undrains live instances (`instances: null`: all of them), with one sidecarDrainLog row each. */
export const drain = mutation({
  args: signedArgs,
  returns: v.object({ instances: v.array(v.string()) }),
  handler: async (ctx, call) => {
    await authenticate(DRAIN_PATH, call, "operator");
    const request = parseDrainRequest(call.body);
    await spendNonce(ctx, request.nonce, call.ts);
    return await applyDrain(ctx, request, Date.now());
  },
});

/** The live instances with their summary and drain, and the recent outage counts, as of the caller's verified `ts`. */
export const fleet = query({
  args: signedArgs,
  returns: fleetAnswer,
  handler: async (ctx, call) => {
    await authenticate(FLEET_PATH, call, "operator");
    parseFleetRequest(call.body);
    // A query takes its time from its arguments: Convex caches queries and does not re-run them
    // as time passes.
    return await fleetOf(ctx, call.ts);
  },
});

/** Refuses a drain whose nonce was accepted before (a replay); keeps the nonce while its ts is in the window. */
async function spendNonce(ctx: MutationCtx, nonce: string, ts: number): Promise<void> {
  const seen = await ctx.db
    .query("sidecarNonces")
    .withIndex("by_nonce", (q) => q.eq("nonce", nonce))
    .first();
  if (seen !== null) refuse("replayed", "this drain was accepted before (its nonce is spent): a replay");
  await ctx.db.insert("sidecarNonces", { nonce, expiresAt: ts + LIMITS.TIMESTAMP_WINDOW_MS });
}

/** Reads nothing: any answer proves the deployment's function runtime runs. */
export const ping = query({
  args: {},
  returns: v.null(),
  handler: async () => null,
});

const purgeAnswer = v.object({ deleted: v.number(), more: v.boolean() });

/**
 * Deletes expired heartbeats with their instances and rows, at most PURGE_BATCH documents a run.
 * It walks the heartbeats one page at a time (one `paginate` per run, as Convex requires) and
 * schedules itself with the cursor to go on from while expired documents may remain. The run
 * that reaches the last page also sweeps the fleet's leftovers (never the drain log). The cron
 * calls it with `{}`: from the first page.
 */
export const purgeExpired = internalMutation({
  args: { cursor: v.optional(v.union(v.string(), v.null())) },
  returns: purgeAnswer,
  handler: async (ctx, { cursor = null }): Promise<Infer<typeof purgeAnswer>> => {
    const now = Date.now();
    const page = await ctx.db.query("sidecarHeartbeats").paginate({ numItems: LIMITS.PURGE_BATCH, cursor });
    let budget: number = LIMITS.PURGE_BATCH;
    for (const beat of page.page) {
      if (isLive(beat, now)) continue;
      budget = await purgeHeartbeat(ctx, beat, budget);
      if (budget === 0) break;
    }
    if (page.isDone && budget > 0) budget = await sweepFleet(ctx, now, budget);
    const deleted = LIMITS.PURGE_BATCH - budget;
    // Out of budget: this page again (what is deleted is gone); else the next page, if any.
    const next = budget === 0 ? cursor : page.isDone ? undefined : page.continueCursor;
    if (next !== undefined) await ctx.scheduler.runAfter(0, internal.health.purgeExpired, { cursor: next });
    return { deleted, more: next !== undefined };
  },
});

/**
 * Deletes an expired heartbeat: first the result and failing rows and the registry document of
 * each instance that points at it, then the heartbeat itself (an orphan heartbeat has no
 * instance). Stops where `budget` (documents still to delete) runs out and returns what is left.
 */
async function purgeHeartbeat(ctx: MutationCtx, beat: Heartbeat, budget: number): Promise<number> {
  const registries = await ctx.db
    .query("sidecarInstances")
    .withIndex("by_heartbeat", (q) => q.eq("heartbeat", beat._id))
    .take(budget);
  for (const registry of registries) {
    const rows = await rowsOf(ctx, registry.instance).take(budget);
    for (const row of rows) await ctx.db.delete("sidecarResults", row._id);
    budget -= rows.length;
    budget -= await purgeFailingOf(ctx, registry.instance, budget);
    if (budget === 0) return 0; // rows may remain: the registry document stays till they are gone
    await ctx.db.delete("sidecarInstances", registry._id);
    budget -= 1;
    if (budget === 0) return 0;
  }
  await ctx.db.delete("sidecarHeartbeats", beat._id);
  return budget - 1;
}
