/**
 * health-sidecar's store, protocol v1 with the fleet additions and v3's trust and counting.
 * docs/convex.md explains the tables, the budget and how to deploy or merge these functions.
 * Helpers live beside this module: healthProtocol.ts (limits, signed calls, strict parse of the
 * bodies), healthCounts.ts (liveness, sharded counters, the recount), healthFleet.ts (summary,
 * failing rows, shared checks, drains, the fleet listing, the sweep), healthTables.ts (tables).
 *
 * - `sync` (public mutation, fleet key) is the only call an instance makes: once per store
 *   period, and promptly when a status changes. In steady state it reads and patches the
 *   instance's heartbeat by the id and token its hello was given, and writes the results that
 *   changed; `hello` (re-)registers the instance by name with a new token, prunes the rows of
 *   checks that are gone and answers the warm start. Every answer carries the drain in the
 *   heartbeat and the live count; with `panic` or `shared`, outage counts and shared checks.
 * - `drain` (public mutation, operator key, a nonce) drains or undrains instances, audited.
 * - `fleet` (public query, operator key) lists the counted instances a page at a time, with the
 *   outages, the live count and the joins of the last hour.
 * - `watch` (public query, instance + token) is what an instance subscribes to: its mailbox, the
 *   verdicts and the shared checks' statuses (documents that change on events only).
 * - `ping` (public query) reads nothing: any answer proves the deployment's runtime runs.
 * - `recount` (internal mutation, scheduled by the changes) rewrites the verdicts.
 * - `purgeExpired` (internal mutation, hourly in crons.ts) pages through every table, deleting
 *   expired instances and what is left over, in bounded batches.
 *
 * Each signed function: bounds, signature over its own path with its key, timestamp, strict
 * body, then the work (healthProtocol.ts); every refusal is a ConvexError {code, message} and
 * changes nothing.
 */
import { v, type Infer } from "convex/values";
import type { WithoutSystemFields } from "convex/server";
import { internal } from "./_generated/api";
import type { Doc, Id } from "./_generated/dataModel";
import { internalMutation, mutation, query, type MutationCtx } from "./_generated/server";
import {
  countInstance,
  counted,
  firstDead,
  liveCount,
  liveUntilOf,
  recount as recountFleet,
  shardOf,
  uncount,
} from "./healthCounts";
import { PEER_REFRESH_MS, forgetPeer, peerAnswer, peersFor, rememberPeer, type PeerAnswer } from "./healthPeers";
import {
  SWEEPERS,
  SWEPT_TABLES,
  applyDrain,
  applyFailing,
  applyShared,
  drainAnswer,
  drainOf,
  fleetAnswer,
  fleetOf,
  isLive,
  mailboxOf,
  outageAnswer,
  outagesOf,
  registryOf,
  sharedAnswer,
  storeSummary,
  summaryChange,
  type SweptTable,
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
  resend: v.boolean(), // always false since v3 (a lost heartbeat is refused: send hello)
  warm: v.union(v.null(), v.object({ confirmedAgeMs: v.number(), results: v.array(wireResult) })),
  outages: v.array(outageAnswer),
  shared: v.array(sharedAnswer),
  drain: drainAnswer,
  live: v.number(), // counted instances as last recounted (this one included once recounted)
  peers: v.optional(v.array(peerAnswer)), // up to 5 others, rotating (healthPeers.ts); absent: keep the last
});
type SyncAnswer = Infer<typeof syncAnswer>;
type Synced = Pick<SyncAnswer, "heartbeat" | "token" | "resend" | "warm" | "drain"> & { before: Heartbeat | null };
type SignedCall = { instance: string; ts: number };

const TOKEN_MISMATCH = "this instance's token does not match: send hello";

async function applySync(ctx: MutationCtx, call: SignedCall, payload: SyncPayload, now: number): Promise<SyncAnswer> {
  const { instance } = call;
  const expiresAt = now + payload.ttlMs;
  const renewed: Renewal = {
    seenAt: now,
    expiresAt,
    liveUntil: payload.leaving ? undefined : liveUntilOf(now, payload.periodMs, expiresAt),
    left: undefined,
    ts: call.ts,
  };
  const synced =
    payload.hello === null
      ? await steadyState(ctx, call, payload, renewed)
      : await registration(ctx, call, payload, renewed);
  // Counting: a join counts the instance with its failing checks, a leave takes them out, a
  // counted instance's change of failing checks moves only those checks' counters.
  const wasCounted = synced.before !== null && synced.before.liveUntil !== undefined;
  const isCounted = !payload.leaving;
  const failing = await applyFailing(
    ctx,
    instance,
    payload.leaving ? [] : (payload.panic?.failing ?? null),
    now + (payload.panic?.holdMs ?? 0),
    wasCounted && isCounted,
    !wasCounted && isCounted,
  );
  if (wasCounted && !isCounted) await countInstance(ctx, instance, synced.failingBefore ?? [], -1);
  if (!wasCounted && isCounted) await countInstance(ctx, instance, failing, 1);
  // One dead instance (no sync before its liveUntil) out of the counts, if any.
  const dead = await firstDead(ctx, now);
  if (dead !== null) await uncount(ctx, dead);
  // As last recounted; at least this instance while it is counted (a fleet of one knows it).
  const recounted = await liveCount(ctx);
  const live = isCounted ? Math.max(recounted, 1) : recounted;
  const outages = payload.panic === null || payload.leaving ? [] : await outagesOf(ctx, failing, live);
  const shared = await applyShared(ctx, instance, payload.shared, now);
  const alone = wasCounted && recounted === 1; // the one counted instance is this one: no peer to name
  const peers = await applyPeers(ctx, instance, payload, synced, now, alone);
  const { before: _, failingBefore: __, ...answer } = synced;
  return { now, expiresAt, written: payload.results.length, ...answer, outages, shared, live, ...peers };
}

/**
 * A hello's `advertise` into the peers' ring, a last sync out of it. The others' handful is read
 * on a hello, on a sync that asks (`wantPeers`: the instance knows none yet) unless the live
 * count says it is `alone` (there is no one to name; an instance alone would otherwise ask on
 * every sync), and once per PEER_REFRESH_MS window of the server's clock (the first sync of the
 * instance in a new window), not on every sync: a steady-state sync reads its heartbeat only.
 * Answered only when read and not empty; absent, the instance keeps the handful it has.
 */
async function applyPeers(
  ctx: MutationCtx,
  instance: string,
  payload: SyncPayload,
  synced: Synced,
  now: number,
  alone: boolean,
): Promise<{ peers?: PeerAnswer[] }> {
  if (payload.leaving) {
    await forgetPeer(ctx, instance);
    return {};
  }
  if (payload.hello !== null && payload.advertise !== null) {
    await rememberPeer(ctx, instance, payload.advertise, synced.heartbeat);
  }
  const before = synced.before?.seenAt;
  const due =
    payload.hello !== null ||
    (payload.wantPeers && !alone) ||
    before === undefined ||
    Math.floor(before / PEER_REFRESH_MS) !== Math.floor(now / PEER_REFRESH_MS);
  const peers = due ? await peersFor(ctx, instance, now) : [];
  return peers.length > 0 ? { peers } : {};
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
): Promise<Synced & { failingBefore?: string[] }> {
  const beat = await heartbeatOf(ctx, payload.heartbeat);
  if (
    beat === null ||
    !isLive(beat, renewed.seenAt) ||
    payload.token === null ||
    beat.tokenHash === undefined ||
    toHex(new Uint8Array(beat.tokenHash)) !== (await tokenHash(instance, payload.token))
  ) {
    refuse("unauthorized", TOKEN_MISMATCH);
  }
  checkNewer(beat, ts);
  const failingBefore = payload.leaving ? await failingOf(ctx, instance) : undefined;
  await writeResults(ctx, instance, payload.results, renewed.seenAt, null);
  await renew(ctx, beat, renewed);
  await storeSummary(ctx, instance, payload.summary);
  const drain = drainOf(beat, renewed.seenAt);
  return { heartbeat: beat._id, token: null, resend: false, warm: null, drain, before: beat, failingBefore };
}

async function failingOf(ctx: MutationCtx, instance: string): Promise<string[]> {
  return (
    await ctx.db
      .query("sidecarFailing")
      .withIndex("by_instance_check", (q) => q.eq("instance", instance))
      .take(LIMITS.MAX_CHECKS)
  ).map((row) => row.check);
}

/**
 * `hello`: registers the instance by name, taking the name over (a restarted container holds no
 * token: the fleet key is per fleet, not per instance), with a new token in the heartbeat and
 * the mailbox. A name new to the deployment is rate-limited (JOINS_PER_MINUTE); an instance
 * not counted joins only while fewer than MAX_INSTANCES are (as last recounted).
 */
async function registration(
  ctx: MutationCtx,
  { instance, ts }: SignedCall,
  payload: SyncPayload,
  renewed: Renewal,
): Promise<Synced & { failingBefore?: string[] }> {
  const now = renewed.seenAt;
  const registry = await registryOf(ctx, instance);
  const previous = registry ? await ctx.db.get("sidecarHeartbeats", registry.heartbeat) : null;
  if (previous !== null) checkNewer(previous, ts);
  if (registry === null) await admitName(ctx, instance, now);
  // An expired heartbeat is as good as purged: its instance's rows may be half deleted already.
  const live = previous !== null && isLive(previous, now);
  if (previous === null || previous.liveUntil === undefined) await admitInstance(ctx);
  const failingBefore = payload.leaving ? await failingOf(ctx, instance) : undefined;
  const kept = payload.hello ? await pruneRows(ctx, instance, payload.hello) : null;
  const warm = kept && live ? warmAnswer(kept, previous, now) : null;
  await writeResults(ctx, instance, payload.results, now, kept?.length ?? null);
  const token = newToken();
  const hash = await tokenHash(instance, token);
  const beat = { ...renewed, tokenHash: fromHex(hash) };
  const heartbeat =
    previous === null ? await ctx.db.insert("sidecarHeartbeats", beat) : await renew(ctx, previous, beat);
  await register(ctx, registry, { instance, version: payload.version, heartbeat }, payload.summary);
  const mailbox = await mailboxOf(ctx, instance);
  if (mailbox === null) await ctx.db.insert("sidecarMailbox", { instance, heartbeat, tokenHash: hash });
  else await ctx.db.patch("sidecarMailbox", mailbox._id, { heartbeat, tokenHash: hash });
  const drain = previous === null ? null : drainOf(previous, now);
  return { heartbeat, token, resend: false, warm, drain, before: previous, failingBefore };
}

type Renewal = {
  seenAt: number;
  expiresAt: number;
  liveUntil: number | undefined;
  left: undefined;
  ts: number;
  tokenHash?: ArrayBuffer;
};

/** Refuses a sync whose `ts` is not newer than the last one accepted for the instance: a replay. */
function checkNewer(beat: Heartbeat, ts: number): void {
  if (beat.ts !== undefined && ts <= beat.ts) {
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

/** The first 16 hex characters of SHA-256(instance + "\n" + token): binds the token to the name. */
export async function tokenHash(instance: string, token: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(`${instance}\n${token}`));
  return toHex(new Uint8Array(digest)).slice(0, 16);
}

function toHex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** The heartbeat's form of a token hash: its 16 hex characters as 8 bytes. */
function fromHex(hex: string): ArrayBuffer {
  return new Uint8Array(hex.match(/../g)!.map((pair) => parseInt(pair, 16))).buffer;
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
  const perMinute = joinsPerMinute();
  if (bucket !== null && bucket.count >= Math.ceil(perMinute / LIMITS.JOIN_SHARDS)) {
    const wait = Math.ceil(((minute + 1) * 60_000 - now) / 1000);
    refuse(
      "rate_limited",
      `too many new instance names this minute (about ${perMinute} a minute): try again in ${wait} s`,
    );
  }
  if (bucket === null) await ctx.db.insert("sidecarJoins", { minute, shard, count: 1 });
  else await ctx.db.patch("sidecarJoins", bucket._id, { count: bucket.count + 1 });
}

/** JOINS_PER_MINUTE, or the deployment's HEALTH_SIDECAR_JOINS_PER_MINUTE (a positive integer). */
function joinsPerMinute(): number {
  const set = Number(process.env.HEALTH_SIDECAR_JOINS_PER_MINUTE);
  return Number.isSafeInteger(set) && set > 0 ? set : LIMITS.JOINS_PER_MINUTE;
}

/** Patches a heartbeat's seenAt, expiresAt and ts; a drain that ended leaves the mailbox in the same patch. */
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

/** Refuses an instance joining the counts when MAX_INSTANCES are counted (as last recounted). */
async function admitInstance(ctx: MutationCtx): Promise<void> {
  if ((await liveCount(ctx)) >= LIMITS.MAX_INSTANCES) {
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

/**
 * One page of the counted instances with their summary and drain, the outages, the live count
 * and the joins of the last hour, as of the caller's verified `ts`. Body `{cursor}` (null or
 * absent: the first page); the answer's `continueCursor` and `isDone` say how to go on.
 */
export const fleet = query({
  args: signedArgs,
  returns: fleetAnswer,
  handler: async (ctx, call) => {
    await authenticate(FLEET_PATH, call, "operator");
    const { cursor } = parseFleetRequest(call.body);
    // A query takes its time from its arguments: Convex caches queries and does not re-run them
    // as time passes.
    return await fleetOf(ctx, call.ts, cursor);
  },
});

const watchAnswer = v.object({
  drain: v.union(
    v.null(),
    v.object({
      reason: v.string(),
      by: v.string(), // the caller's claim
      key: v.union(v.literal("operator"), v.null()),
      at: v.number(), // server ms
      until: v.union(v.number(), v.null()), // server ms
    }),
  ),
  live: v.number(),
  verdicts: v.array(v.object({ check: v.string(), failing: v.number(), live: v.number(), since: v.number() })),
  shared: v.array(v.object({ check: v.string(), fingerprint: v.string(), status: v.string(), since: v.number() })),
});

/**
 * What an instance subscribes to (Convex re-runs it when a document it read changes): its
 * mailbox (written by its hello and by drains only), the verdicts (written by the recount only
 * when a number changes), the live count and the shared checks' statuses (written when a status
 * changes). Never the heartbeat, which every sync patches. `token` is what the instance's hello
 * answered; a wrong one is refused `unauthorized` (the client polls until its next hello).
 * Times are the server's ms.
 */
export const watch = query({
  args: { instance: v.string(), token: v.string() },
  returns: watchAnswer,
  handler: async (ctx, { instance, token }) => {
    if (instance.length < 1 || instance.length > FIELD_LIMITS.INSTANCE) {
      refuse("invalid_argument", `instance must be 1 to ${FIELD_LIMITS.INSTANCE} characters`);
    }
    if (!/^[0-9a-f]{64}$/.test(token)) refuse("invalid_argument", "token must be 64 lowercase hex characters");
    const mailbox = await mailboxOf(ctx, instance);
    if (mailbox === null || mailbox.tokenHash !== (await tokenHash(instance, token))) {
      refuse("unauthorized", TOKEN_MISMATCH);
    }
    const drain = mailbox.drain ?? null;
    const verdicts = await ctx.db.query("sidecarVerdicts").take(WATCH_ROWS);
    const shared = await ctx.db.query("sidecarSharedStatus").take(WATCH_ROWS);
    return {
      drain: drain === null ? null : { ...drain, key: drain.key ?? null },
      live: await liveCount(ctx),
      verdicts: verdicts.map(({ check, failing, live, since }) => ({ check, failing, live, since })),
      shared: shared.map(({ check, fingerprint, status, since }) => ({ check, fingerprint, status, since })),
    };
  },
});

const WATCH_ROWS = 200;

/** Rewrites the verdicts from the counters (one writer; scheduled by the changes, debounced). */
export const recount = internalMutation({
  args: {},
  returns: v.object({ changed: v.number(), more: v.boolean() }),
  handler: async (ctx) => await recountFleet(ctx, Date.now()),
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
const SWEEP_ORDER: Array<"sidecarHeartbeats" | SweptTable> = ["sidecarHeartbeats", ...SWEPT_TABLES];

/**
 * Pages through every table but the drain log, deleting expired instances (heartbeat, registry,
 * mailbox, rows) and what is left over (healthFleet.SWEEPERS), at most PURGE_BATCH documents a
 * run: one `paginate` a run (as Convex requires), then it schedules itself with where to go on
 * from, table by table, until the last page of the last table. The cron calls it with `{}`.
 */
export const purgeExpired = internalMutation({
  args: { cursor: v.optional(v.union(v.string(), v.null())), table: v.optional(v.number()) },
  returns: purgeAnswer,
  handler: async (ctx, { cursor = null, table = 0 }): Promise<Infer<typeof purgeAnswer>> => {
    const now = Date.now();
    const name = SWEEP_ORDER[table];
    const page = await ctx.db.query(name).paginate({ numItems: LIMITS.PURGE_BATCH, cursor });
    let budget: number = LIMITS.PURGE_BATCH;
    for (const doc of page.page) {
      if (name === "sidecarHeartbeats") {
        const beat = doc as Heartbeat;
        if (isLive(beat, now)) continue;
        budget = await purgeHeartbeat(ctx, beat, budget);
      } else {
        const leftOver = SWEEPERS[name] as (ctx: MutationCtx, doc: unknown, now: number) => Promise<boolean>;
        if (!(await leftOver(ctx, doc, now))) continue;
        await ctx.db.delete(name, doc._id as Id<SweptTable>);
        budget -= 1;
      }
      if (budget <= 0) break;
    }
    const deleted = LIMITS.PURGE_BATCH - budget;
    // Out of budget: this page again (what is deleted is gone); else the next page, or table.
    let next: { table: number; cursor: string | null } | null = null;
    if (budget <= 0) next = { table, cursor };
    else if (!page.isDone) next = { table, cursor: page.continueCursor };
    else if (table + 1 < SWEEP_ORDER.length) next = { table: table + 1, cursor: null };
    if (next !== null) await ctx.scheduler.runAfter(0, internal.health.purgeExpired, next);
    return { deleted, more: next !== null };
  },
});

/**
 * Deletes an expired heartbeat: first it leaves the counts, then the result and failing rows,
 * the mailbox and the registry document of the instance that points at it, then the heartbeat
 * itself. Stops where `budget` (documents still to delete) runs out and returns what is left.
 */
async function purgeHeartbeat(ctx: MutationCtx, beat: Heartbeat, budget: number): Promise<number> {
  budget -= await uncount(ctx, beat);
  if (budget <= 0) return 0; // the next run goes on: it is out of the counts now
  const registries = await ctx.db
    .query("sidecarInstances")
    .withIndex("by_heartbeat", (q) => q.eq("heartbeat", beat._id))
    .take(budget);
  for (const registry of registries) {
    const rows = await rowsOf(ctx, registry.instance).take(budget);
    for (const row of rows) await ctx.db.delete("sidecarResults", row._id);
    budget -= rows.length;
    if (budget <= 0) return 0; // rows may remain: the registry document stays till they are gone
    const mailbox = await mailboxOf(ctx, registry.instance);
    if (mailbox !== null) {
      await ctx.db.delete("sidecarMailbox", mailbox._id);
      budget -= 1;
    }
    await ctx.db.delete("sidecarInstances", registry._id);
    budget -= 1;
    if (budget <= 0) return 0;
  }
  await ctx.db.delete("sidecarHeartbeats", beat._id);
  return budget - 1;
}
