/**
 * health-sidecar's store, protocol v1. README.md, "Convex: deploying the functions", explains
 * the tables, the budget and how to deploy or merge these functions.
 *
 * - `sync` (public mutation) is the only call an instance makes: once per store period, and
 *   promptly when a status changes. In steady state it reads and patches the instance's
 *   heartbeat document by the id the previous answer gave, and writes the results that changed;
 *   after a restart (`hello`), or when that heartbeat is gone or expired, it registers the
 *   instance by name, and on `hello` prunes the rows of checks that are gone and answers the
 *   warm start.
 * - `ping` (public query) reads nothing: any answer proves the deployment's runtime runs.
 * - `purgeExpired` (internal mutation, hourly in crons.ts) deletes expired heartbeats, their
 *   instances and rows in bounded batches.
 *
 * Signed calls: the secret never crosses the wire. `sig` is the lowercase hex HMAC-SHA256, keyed
 * by the deployment's HEALTH_SIDECAR_SECRET, over
 * "health-sidecar/1\n" + path + "\n" + instance + "\n" + ts + "\n" + body.
 * Order of work, nothing touching the database before the last step: bounds, signature (Web
 * Crypto, constant time), `ts` within 60 s of the server's clock, strict parse of `body`, then
 * the work, timed by the server's clock alone. Every refusal is a ConvexError {code, message}
 * (code "unauthorized" | "invalid_argument" | "limit_exceeded") and changes nothing; no message
 * quotes the secret, the signature or the body.
 */
import { ConvexError, v, type Infer, type ObjectType } from "convex/values";
import type { WithoutSystemFields } from "convex/server";
import { internal } from "./_generated/api";
import type { Doc, Id } from "./_generated/dataModel";
import { internalMutation, mutation, query, type MutationCtx } from "./_generated/server";
import { status } from "./healthTables";

/** The protocol's limits (a test checks the sidecar's Python copies against these). */
export const LIMITS = {
  MAX_CHECKS: 200,
  MAX_INSTANCES: 1000,
  MAX_BODY: 1_000_000,
  MAX_OUTPUT: 1024,
  TIMESTAMP_WINDOW_MS: 60_000,
  PURGE_BATCH: 500,
  MIN_TTL_MS: 10_000,
  MAX_TTL_MS: 86_400_000,
} as const;

/** Bounds of single fields: string lengths in UTF-16 units, durations in ms. */
export const FIELD_LIMITS = {
  INSTANCE: 200,
  VERSION: 40,
  NAME: 64, // check names and fingerprints
  HEARTBEAT: 64, // the heartbeat id a caller sends back (a Convex id: 32 characters for most tables)
  MAX_AGE_MS: 86_400_000,
  MAX_LATENCY_MS: 3_600_000,
} as const;

const SCHEME = "health-sidecar/1";
const SYNC_PATH = "health:sync";
const NO_SECRET = "bad signature: HEALTH_SIDECAR_SECRET is not set on the deployment";
const BAD_SIGNATURE = "bad signature: the sidecar's HEALTH_SIDECAR_SECRET differs from the deployment's";
const HMAC_SHA256 = { name: "HMAC", hash: "SHA-256" } as const;
const encoder = new TextEncoder();

type RefusalCode = "unauthorized" | "invalid_argument" | "limit_exceeded";

function refuse(code: RefusalCode, message: string): never {
  throw new ConvexError({ code, message });
}

function invalid(message: string): never {
  return refuse("invalid_argument", message);
}

// ---------------------------------------------------------------------------------------------
// Signed calls: bounds, signature, timestamp (steps 1 to 3; no database access).

const signedArgs = { instance: v.string(), ts: v.number(), sig: v.string(), body: v.string() };
type SignedCall = ObjectType<typeof signedArgs>;

/** Refuses the call unless it is in bounds, signed with the secret for `path`, and recent. */
async function authenticate(path: string, call: SignedCall): Promise<void> {
  checkBounds(call);
  await verifySignature(path, call);
  checkTimestamp(call.ts);
}

function checkBounds({ instance, ts, sig, body }: SignedCall): void {
  if (instance.length < 1 || instance.length > FIELD_LIMITS.INSTANCE) {
    invalid(`instance must be 1 to ${FIELD_LIMITS.INSTANCE} characters`);
  }
  if (!/^[0-9a-f]{64}$/.test(sig)) invalid("sig must be 64 lowercase hex characters");
  if (body.length > LIMITS.MAX_BODY) invalid(`body must be at most ${LIMITS.MAX_BODY} characters`);
  if (!Number.isSafeInteger(ts) || ts < 0) invalid("ts must be an integer >= 0 (ms since the epoch)");
}

async function verifySignature(path: string, { instance, ts, sig, body }: SignedCall): Promise<void> {
  const secret = process.env.HEALTH_SIDECAR_SECRET;
  if (!secret) refuse("unauthorized", NO_SECRET);
  const key = await crypto.subtle.importKey("raw", encoder.encode(secret), HMAC_SHA256, false, ["verify"]);
  const message = encoder.encode([SCHEME, path, instance, String(ts), body].join("\n"));
  if (!(await crypto.subtle.verify("HMAC", key, hexBytes(sig), message))) refuse("unauthorized", BAD_SIGNATURE);
}

function hexBytes(hex: string): Uint8Array<ArrayBuffer> {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i++) bytes[i] = parseInt(hex.slice(2 * i, 2 * i + 2), 16);
  return bytes;
}

function checkTimestamp(ts: number): void {
  const skewMs = Math.abs(ts - Date.now());
  if (skewMs > LIMITS.TIMESTAMP_WINDOW_MS) {
    const seconds = Math.ceil(skewMs / 1000);
    refuse(
      "unauthorized",
      `timestamp ${seconds} s from the deployment's clock (at most ${LIMITS.TIMESTAMP_WINDOW_MS / 1000} s): check the sidecar's clock`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// The payload: strict parse of `body` (step 4). Messages name the field, never quote a value.

/** One result, as the sidecar sends it and as the warm answer returns it (ages, not times). */
const wireResult = v.object({
  check: v.string(),
  fingerprint: v.string(),
  status,
  ageMs: v.number(),
  latencyMs: v.number(),
  output: v.string(),
  consecutiveFailures: v.number(),
  consecutiveSuccesses: v.number(),
  lastSuccessAgeMs: v.union(v.number(), v.null()),
});
type WireResult = Infer<typeof wireResult>;
type Status = WireResult["status"];

interface Payload {
  version: string;
  ttlMs: number;
  hello: Map<string, string> | null; // check -> fingerprint
  heartbeat: string | null; // the id the previous answer gave, unchecked (ignored with hello)
  results: WireResult[];
}

type JsonObject = Record<string, unknown>;
const RESULT_KEYS = Object.keys(wireResult.fields);
const STATUSES: readonly string[] = status.members.map((member) => member.value);

function parsePayload(body: string): Payload {
  let json: unknown;
  try {
    json = JSON.parse(body);
  } catch {
    invalid("body must be JSON text");
  }
  const payload = fields(json, "body", ["version", "ttlMs", "results"], ["hello", "heartbeat"]);
  return {
    version: text(payload.version, "body.version", 1, FIELD_LIMITS.VERSION),
    ttlMs: amount(payload.ttlMs, "body.ttlMs", LIMITS.MIN_TTL_MS, LIMITS.MAX_TTL_MS),
    hello: parseHello(payload.hello),
    heartbeat: parseHeartbeat(payload.heartbeat),
    results: parseResults(payload.results),
  };
}

function parseHello(value: unknown): Map<string, string> | null {
  if (value === undefined || value === null) return null;
  const entries = Object.entries(jsonObject(value, "body.hello"));
  if (entries.length > LIMITS.MAX_CHECKS) invalid(`body.hello must hold at most ${LIMITS.MAX_CHECKS} checks`);
  return new Map(
    entries.map(([check, fingerprint], i) => [
      text(check, `body.hello's check #${i + 1}`, 1, FIELD_LIMITS.NAME),
      text(fingerprint, `body.hello's fingerprint #${i + 1}`, 1, FIELD_LIMITS.NAME),
    ]),
  );
}

/** The heartbeat id as sent: null or absent on `hello`; any string (up to the bound) may be stale or garbage. */
function parseHeartbeat(value: unknown): string | null {
  if (value === undefined || value === null) return null;
  return text(value, "body.heartbeat", 0, FIELD_LIMITS.HEARTBEAT);
}

function parseResults(value: unknown): WireResult[] {
  if (!Array.isArray(value)) invalid("body.results must be a JSON array");
  if (value.length > LIMITS.MAX_CHECKS) invalid(`body.results must hold at most ${LIMITS.MAX_CHECKS} results`);
  const seen = new Set<string>();
  return value.map((item: unknown, i) => {
    const result = parseResult(item, `body.results[${i}]`);
    if (seen.has(result.check)) invalid(`body.results[${i}].check repeats an earlier result's check`);
    seen.add(result.check);
    return result;
  });
}

function parseResult(value: unknown, field: string): WireResult {
  const result = fields(value, field, RESULT_KEYS);
  return {
    check: text(result.check, `${field}.check`, 1, FIELD_LIMITS.NAME),
    fingerprint: text(result.fingerprint, `${field}.fingerprint`, 1, FIELD_LIMITS.NAME),
    status: statusOf(result.status, `${field}.status`),
    ageMs: age(result.ageMs, `${field}.ageMs`),
    latencyMs: amount(result.latencyMs, `${field}.latencyMs`, 0, FIELD_LIMITS.MAX_LATENCY_MS),
    output: text(result.output, `${field}.output`, 0, LIMITS.MAX_OUTPUT),
    consecutiveFailures: count(result.consecutiveFailures, `${field}.consecutiveFailures`),
    consecutiveSuccesses: count(result.consecutiveSuccesses, `${field}.consecutiveSuccesses`),
    lastSuccessAgeMs:
      result.lastSuccessAgeMs === null ? null : age(result.lastSuccessAgeMs, `${field}.lastSuccessAgeMs`),
  };
}

function jsonObject(value: unknown, field: string): JsonObject {
  if (typeof value !== "object" || value === null || Array.isArray(value)) invalid(`${field} must be a JSON object`);
  return value as JsonObject;
}

/** A JSON object with exactly the `required` keys and at most the `optional` ones. */
function fields(
  value: unknown,
  field: string,
  required: readonly string[],
  optional: readonly string[] = [],
): JsonObject {
  const object = jsonObject(value, field);
  const allowed = [...required, ...optional];
  if (Object.keys(object).some((key) => !allowed.includes(key))) {
    invalid(`${field} has an unknown key (allowed: ${allowed.join(", ")})`);
  }
  const missing = required.find((key) => !Object.hasOwn(object, key));
  if (missing !== undefined) invalid(`${field}.${missing} is missing`);
  return object;
}

function text(value: unknown, field: string, min: number, max: number): string {
  if (typeof value !== "string" || value.length < min || value.length > max) {
    invalid(`${field} must be a string of ${min} to ${max} characters`);
  }
  return value;
}

function amount(value: unknown, field: string, min: number, max: number): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < min || value > max) {
    invalid(`${field} must be a number from ${min} to ${max}`);
  }
  return value;
}

/** How long ago a result was observed: never negative (a result from the future). */
function age(value: unknown, field: string): number {
  return amount(value, field, 0, FIELD_LIMITS.MAX_AGE_MS);
}

function count(value: unknown, field: string): number {
  if (!Number.isSafeInteger(value) || (value as number) < 0) invalid(`${field} must be an integer >= 0`);
  return value as number;
}

function statusOf(value: unknown, field: string): Status {
  if (typeof value !== "string" || !STATUSES.includes(value)) invalid(`${field} must be one of ${STATUSES.join(", ")}`);
  return value as Status;
}

// ---------------------------------------------------------------------------------------------
// The work (step 5), with the server's clock.

type Registry = Doc<"sidecarInstances">;
type Heartbeat = Doc<"sidecarHeartbeats">;
type Row = Doc<"sidecarResults">;
type Warm = SyncAnswer["warm"];

const syncAnswer = v.object({
  now: v.number(),
  expiresAt: v.number(),
  heartbeat: v.id("sidecarHeartbeats"),
  written: v.number(),
  resend: v.boolean(),
  warm: v.union(v.null(), v.object({ confirmedAgeMs: v.number(), results: v.array(wireResult) })),
});
type SyncAnswer = Infer<typeof syncAnswer>;

async function applySync(ctx: MutationCtx, instance: string, payload: Payload, now: number): Promise<SyncAnswer> {
  const expiresAt = now + payload.ttlMs;
  const renewed = { seenAt: now, expiresAt };
  const written = payload.results.length;
  if (payload.hello === null) {
    // The steady state: one get and one patch of a ~98-byte document, by id. A signed caller is
    // trusted with any instance (the secret is shared), so the registry is not read to check
    // that the heartbeat is this instance's.
    const beat = await heartbeatOf(ctx, payload.heartbeat);
    if (beat !== null && isLive(beat, now)) {
      await writeResults(ctx, instance, payload.results, now, null);
      await ctx.db.patch("sidecarHeartbeats", beat._id, renewed);
      return { now, expiresAt, heartbeat: beat._id, written, resend: false, warm: null };
    }
  }
  // `hello`, or a heartbeat that is unknown, purged or expired: (re-)register by name.
  const registry = await ctx.db
    .query("sidecarInstances")
    .withIndex("by_instance", (q) => q.eq("instance", instance))
    .unique();
  const previous = registry ? await ctx.db.get("sidecarHeartbeats", registry.heartbeat) : null;
  // An expired heartbeat is as good as purged: its instance's rows may be half deleted already.
  const live = previous !== null && isLive(previous, now);
  if (!live) await admitInstance(ctx, now);
  const kept = payload.hello ? await pruneRows(ctx, instance, payload.hello) : null;
  const warm = kept && live ? warmAnswer(kept, previous, now) : null;
  await writeResults(ctx, instance, payload.results, now, kept?.length ?? null);
  const heartbeat = await renewHeartbeat(ctx, previous, renewed);
  await register(ctx, registry, { instance, version: payload.version, heartbeat });
  // Without hello, the caller's acknowledged results may be gone: it must send them all again.
  return { now, expiresAt, heartbeat, written, resend: payload.hello === null, warm };
}

function isLive(beat: Heartbeat, now: number): boolean {
  return beat.expiresAt > now;
}

/** The heartbeat the caller names, or null when the id is absent, not a heartbeat's, or deleted. */
async function heartbeatOf(ctx: MutationCtx, id: string | null): Promise<Heartbeat | null> {
  const normalized = id === null ? null : ctx.db.normalizeId("sidecarHeartbeats", id);
  return normalized === null ? null : await ctx.db.get("sidecarHeartbeats", normalized);
}

/** The rows `hello` kept, aged by the server's clock; all were current at the previous sync. */
function warmAnswer(kept: Row[], previous: Heartbeat, now: number): Warm {
  return { confirmedAgeMs: now - previous.seenAt, results: kept.map((row) => toWire(row, now)) };
}

/** Renews the instance's previous heartbeat (live or not) or, when it has none, inserts one. */
async function renewHeartbeat(
  ctx: MutationCtx,
  previous: Heartbeat | null,
  renewed: WithoutSystemFields<Heartbeat>,
): Promise<Id<"sidecarHeartbeats">> {
  if (previous === null) return await ctx.db.insert("sidecarHeartbeats", renewed);
  await ctx.db.patch("sidecarHeartbeats", previous._id, renewed);
  return previous._id;
}

/** Inserts the registry document, or patches it when its version or heartbeat changed. */
async function register(ctx: MutationCtx, registry: Registry | null, wanted: WithoutSystemFields<Registry>) {
  if (registry === null) await ctx.db.insert("sidecarInstances", wanted);
  else if (registry.version !== wanted.version || registry.heartbeat !== wanted.heartbeat) {
    await ctx.db.patch("sidecarInstances", registry._id, { version: wanted.version, heartbeat: wanted.heartbeat });
  }
}

/**
 * Refuses a new (or revived) instance when MAX_INSTANCES live heartbeats exist. The heartbeats
 * have no index (it would cost every steady-state sync its entry), so this scans them, stopping
 * at MAX_INSTANCES live ones; it runs only when an instance is not live.
 */
async function admitInstance(ctx: MutationCtx, now: number): Promise<void> {
  let live = 0;
  for await (const beat of ctx.db.query("sidecarHeartbeats")) {
    if (isLive(beat, now) && ++live >= LIMITS.MAX_INSTANCES) {
      refuse("limit_exceeded", `the deployment already has ${LIMITS.MAX_INSTANCES} live instances`);
    }
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
    const row = toRow(instance, result, now);
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

function toRow(instance: string, result: WireResult, now: number): WithoutSystemFields<Row> {
  const { ageMs, lastSuccessAgeMs, ...same } = result;
  return {
    instance,
    ...same,
    observedAt: now - ageMs,
    lastSuccessAt: lastSuccessAgeMs === null ? null : now - lastSuccessAgeMs,
  };
}

function toWire(row: Row, now: number): WireResult {
  const { _id, _creationTime, instance, observedAt, lastSuccessAt, ...same } = row;
  return { ...same, ageMs: now - observedAt, lastSuccessAgeMs: lastSuccessAt === null ? null : now - lastSuccessAt };
}

// ---------------------------------------------------------------------------------------------
// The functions.

/** An instance's one call per store period: liveness, changed results, and the warm start after `hello`. */
export const sync = mutation({
  args: signedArgs,
  returns: syncAnswer,
  handler: async (ctx, call) => {
    await authenticate(SYNC_PATH, call);
    const payload = parsePayload(call.body);
    return await applySync(ctx, call.instance, payload, Date.now());
  },
});

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
 * schedules itself with the cursor to go on from while expired documents may remain. The cron
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
    const deleted = LIMITS.PURGE_BATCH - budget;
    // Out of budget: this page again (what is deleted is gone); else the next page, if any.
    const next = budget === 0 ? cursor : page.isDone ? undefined : page.continueCursor;
    if (next !== undefined) await ctx.scheduler.runAfter(0, internal.health.purgeExpired, { cursor: next });
    return { deleted, more: next !== undefined };
  },
});

/**
 * Deletes an expired heartbeat: first the rows and the registry document of each instance that
 * points at it, then the heartbeat itself (an orphan heartbeat has no instance). Stops where
 * `budget` (documents still to delete) runs out and returns what is left of it.
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
    if (budget === 0) return 0; // rows may remain: the registry document stays till they are gone
    await ctx.db.delete("sidecarInstances", registry._id);
    budget -= 1;
    if (budget === 0) return 0;
  }
  await ctx.db.delete("sidecarHeartbeats", beat._id);
  return budget - 1;
}
