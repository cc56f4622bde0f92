/**
 * The wire side of health-sidecar's store: the limits, signed calls, and the strict parse of the
 * JSON bodies of `health:sync`, `health:drain` and `health:fleet` (convex/health.ts). Plain
 * helpers only: no Convex function is defined here.
 *
 * Signed calls: the secrets never cross the wire. `sig` is the lowercase hex HMAC-SHA256 over
 * "health-sidecar/1\n" + path + "\n" + instance + "\n" + ts + "\n" + body, where `path` is the
 * function's ("health:sync", "health:drain", "health:fleet"): a signature is good for one
 * function. Two keys: `health:sync` takes only the fleet key (HEALTH_SIDECAR_SECRET, every
 * sidecar holds it); `health:drain` and `health:fleet` take only the operator key
 * (HEALTH_SIDECAR_OPERATOR_SECRET, the deployment's and the CLI's, never a sidecar's).
 * Order of work, nothing touching the database before the last step: bounds, signature (Web
 * Crypto, constant time), `ts` within 30 s of the server's clock (else `clock_skew`), strict
 * parse of `body`, then the work (where replays are refused: a sync's `ts` must be newer than
 * the last one accepted for its instance, a drain's `nonce` must be new). Every refusal is a
 * ConvexError {code, message} and changes nothing; no message quotes a secret, the signature or
 * the body (names of instances and checks may be quoted).
 */
import { ConvexError, v, type Infer, type ObjectType } from "convex/values";
import { resultFields, status } from "./healthTables";

/** The protocol's limits (a test checks the sidecar's Python copies against these). */
export const LIMITS = {
  MAX_CHECKS: 200,
  MAX_INSTANCES: 1000,
  MAX_BODY: 1_000_000,
  MAX_OUTPUT: 1024,
  TIMESTAMP_WINDOW_MS: 30_000,
  PURGE_BATCH: 500,
  MIN_TTL_MS: 10_000,
  MAX_TTL_MS: 86_400_000, // accepted in a body, then clamped to TTL_CLAMP_MS
  TTL_CLAMP_MS: 900_000, // the longest an instance's documents outlive its last sync
  MIN_PERIOD_MS: 1_000, // body.periodMs (the caller's store period), clamped to this range
  MAX_PERIOD_MS: 300_000,
  JOINS_PER_MINUTE: 200, // new instance names a minute, deployment-wide (JOIN_SHARDS buckets)
  JOIN_SHARDS: 16,
} as const;

/** Bounds of single fields: string lengths in UTF-16 units, durations in ms. */
export const FIELD_LIMITS = {
  INSTANCE: 200, // also `by` of a drain
  VERSION: 40,
  NAME: 64, // check names and fingerprints
  HEARTBEAT: 64, // the heartbeat id a caller sends back (a Convex id: 32 characters for most tables)
  CURSOR: 1_000, // a health:fleet page's cursor, as the previous page answered it
  TOKEN: 64, // the token a hello answered (64 lowercase hex), as health:watch takes it
  PEER_URL: 500, // a hello's `advertise`: where the peers reach the instance's sidecar
  MAX_AGE_MS: 86_400_000,
  MAX_LATENCY_MS: 3_600_000,
  MAX_REASONS: 20, // summary.reasons
  REASON: 300, // a summary reason, a drain's reason
  MIN_HOLD_MS: 1_000, // panic.holdMs and shared[].leaseMs
  MAX_HOLD_MS: 3_600_000, // accepted in a body, then clamped to HOLD_CLAMP_MS
  HOLD_CLAMP_MS: 300_000, // a few check intervals
  MIN_DRAIN_MS: 1_000, // a drain's forMs
  MAX_DRAIN_MS: 30 * 86_400_000,
} as const;

const SCHEME = "health-sidecar/1";
const HMAC_SHA256 = { name: "HMAC", hash: "SHA-256" } as const;
const encoder = new TextEncoder();

/** Which secret a function takes: the fleet's (every sidecar) or the operator's (drain, fleet). */
export type Key = "fleet" | "operator";
const KEY_ENV: Record<Key, string> = { fleet: "HEALTH_SIDECAR_SECRET", operator: "HEALTH_SIDECAR_OPERATOR_SECRET" };
const BAD_SIGNATURE: Record<Key, string> = {
  fleet: "bad signature: the sidecar's HEALTH_SIDECAR_SECRET differs from the deployment's",
  operator: "bad signature: the caller's HEALTH_SIDECAR_OPERATOR_SECRET differs from the deployment's",
};
const FLEET_KEY_ON_OPERATOR_CALL =
  "bad signature: signed with the fleet key (HEALTH_SIDECAR_SECRET); drain and fleet need the operator key (HEALTH_SIDECAR_OPERATOR_SECRET)";

export type RefusalCode =
  | "unauthorized"
  | "invalid_argument"
  | "limit_exceeded"
  | "clock_skew"
  | "replayed"
  | "rate_limited";

export function refuse(code: RefusalCode, message: string): never {
  throw new ConvexError({ code, message });
}

function invalid(message: string): never {
  return refuse("invalid_argument", message);
}

// ---------------------------------------------------------------------------------------------
// Signed calls: bounds, signature, timestamp (no database access).

/** The arguments of every signed function. */
export const signedArgs = { instance: v.string(), ts: v.number(), sig: v.string(), body: v.string() };
type SignedCall = ObjectType<typeof signedArgs>;

/** Refuses the call unless it is in bounds, signed with `key`'s secret for `path`, and recent. */
export async function authenticate(path: string, call: SignedCall, key: Key = "fleet"): Promise<void> {
  checkBounds(call);
  await verifySignature(path, call, key);
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

async function verifySignature(path: string, { instance, ts, sig, body }: SignedCall, key: Key): Promise<void> {
  const secret = process.env[KEY_ENV[key]];
  if (!secret) refuse("unauthorized", `bad signature: ${KEY_ENV[key]} is not set on the deployment`);
  const message = encoder.encode([SCHEME, path, instance, String(ts), body].join("\n"));
  if (await verifies(secret, sig, message)) return;
  // An operator call signed with the fleet key: say which key it needs (the fleet key is no
  // operator key, whoever holds it).
  const fleetSecret = process.env[KEY_ENV.fleet];
  if (key === "operator" && fleetSecret && (await verifies(fleetSecret, sig, message))) {
    refuse("unauthorized", FLEET_KEY_ON_OPERATOR_CALL);
  }
  refuse("unauthorized", BAD_SIGNATURE[key]);
}

async function verifies(secret: string, sig: string, message: Uint8Array<ArrayBuffer>): Promise<boolean> {
  const key = await crypto.subtle.importKey("raw", encoder.encode(secret), HMAC_SHA256, false, ["verify"]);
  return await crypto.subtle.verify("HMAC", key, hexBytes(sig), message);
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
      "clock_skew",
      `timestamp ${seconds} s from the deployment's clock (at most ${LIMITS.TIMESTAMP_WINDOW_MS / 1000} s): check the sidecar's clock`,
    );
  }
}

// ---------------------------------------------------------------------------------------------
// Results on the wire (ages) and stored (server times).

/** One result, as the sidecar sends it and as answers return it (ages, not times). */
export const wireResult = v.object({
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
export type WireResult = Infer<typeof wireResult>;
type Status = WireResult["status"];
const storedResult = v.object(resultFields);
export type StoredResult = Infer<typeof storedResult>;

/** A result timed by the server's clock: `now` minus the ages the caller reports. */
export function toStored(result: WireResult, now: number): StoredResult {
  const { check, fingerprint, ageMs, lastSuccessAgeMs, ...same } = result;
  return {
    ...same,
    observedAt: now - ageMs,
    lastSuccessAt: lastSuccessAgeMs === null ? null : now - lastSuccessAgeMs,
  };
}

/** A stored result (a row or a shared result) on the wire, aged by the server's clock. */
export function toWire(check: string, fingerprint: string, stored: StoredResult, now: number): WireResult {
  return {
    check,
    fingerprint,
    status: stored.status,
    ageMs: now - stored.observedAt,
    latencyMs: stored.latencyMs,
    output: stored.output,
    consecutiveFailures: stored.consecutiveFailures,
    consecutiveSuccesses: stored.consecutiveSuccesses,
    lastSuccessAgeMs: stored.lastSuccessAt === null ? null : now - stored.lastSuccessAt,
  };
}

// ---------------------------------------------------------------------------------------------
// Bodies: strict parse. Messages name the field, never quote a value.

/** The instance's own view of itself, stored on its registry document. */
export interface Summary {
  ready: boolean;
  reasons: string[];
  failing: string[];
}

/** The panic checks failing on the instance now, and how long an entry counts unrefreshed. */
export interface Panic {
  failing: string[];
  holdMs: number;
}

/** A shared check: its definition, the lease asked for, and the result when the caller probed. */
export interface SharedCheck {
  check: string;
  fingerprint: string;
  leaseMs: number;
  result: WireResult | null;
}

export interface SyncPayload {
  version: string;
  ttlMs: number; // clamped to [MIN_TTL_MS, TTL_CLAMP_MS]
  periodMs: number | null; // the caller's store period, clamped; null: not sent (liveness = ttlMs)
  token: string | null; // what the instance's last hello answered (64 lowercase hex)
  hello: Map<string, string> | null; // check -> fingerprint
  heartbeat: string | null; // the id the previous answer gave, unchecked (ignored with hello)
  results: WireResult[];
  summary: Summary | null;
  panic: Panic | null;
  shared: SharedCheck[];
  leaving: boolean; // the instance's last sync before it stops: it leaves the fleet's counts
  advertise: string | null; // with hello: where the peers reach this instance's sidecar (healthPeers.ts)
  wantPeers: boolean; // the instance knows no peer yet: read the ring now (healthPeers.ts)
}

/** A drain needs a reason and may end by itself (forMs; null: until undrained); an undrain has neither. */
export type DrainRequest = {
  instances: string[] | null; // null: every live instance
  by: string; // the caller's claim, recorded as sent
  nonce: string; // 32 lowercase hex, new for every call: a replay is refused
} & ({ action: "drain"; reason: string; forMs: number | null } | { action: "undrain"; reason: null; forMs: null });

type JsonObject = Record<string, unknown>;
const RESULT_KEYS = Object.keys(wireResult.fields);
const STATUSES: readonly string[] = status.members.map((member) => member.value);

export function parseSyncPayload(body: string): SyncPayload {
  const payload = fields(parseJson(body), "body", ["version", "ttlMs", "results"], OPTIONAL_SYNC_KEYS);
  return {
    version: text(payload.version, "body.version", 1, FIELD_LIMITS.VERSION),
    ttlMs: Math.min(amount(payload.ttlMs, "body.ttlMs", LIMITS.MIN_TTL_MS, LIMITS.MAX_TTL_MS), LIMITS.TTL_CLAMP_MS),
    periodMs: absent(payload.periodMs)
      ? null
      : clamp(amount(payload.periodMs, "body.periodMs", 0, LIMITS.MAX_TTL_MS), LIMITS.MIN_PERIOD_MS, LIMITS.MAX_PERIOD_MS),
    token: absent(payload.token) ? null : hex(payload.token, "body.token", 64),
    hello: parseHello(payload.hello),
    heartbeat: parseHeartbeat(payload.heartbeat),
    results: list(payload.results, "body.results", 0, LIMITS.MAX_CHECKS, parseResult, (r) => r.check),
    summary: absent(payload.summary) ? null : parseSummary(payload.summary),
    panic: absent(payload.panic) ? null : parsePanic(payload.panic),
    shared: absent(payload.shared)
      ? []
      : list(payload.shared, "body.shared", 0, LIMITS.MAX_CHECKS, parseShared, (s) => s.check),
    leaving: absent(payload.leaving) ? false : flag(payload.leaving, "body.leaving"),
    advertise: absent(payload.advertise) ? null : peerUrl(payload.advertise, "body.advertise"),
    wantPeers: absent(payload.wantPeers) ? false : flag(payload.wantPeers, "body.wantPeers"),
  };
}

const OPTIONAL_SYNC_KEYS = [
  "hello",
  "heartbeat",
  "token",
  "periodMs",
  "summary",
  "panic",
  "shared",
  "leaving",
  "advertise",
  "wantPeers",
];

/** A peer's URL: http(s) with a host, printable ASCII, no credentials, query or fragment, bounded. */
function peerUrl(value: unknown, field: string): string {
  const url = text(value, field, 1, FIELD_LIMITS.PEER_URL);
  let host = "";
  try {
    host = new URL(url).hostname;
  } catch {
    host = "";
  }
  if (!/^https?:\/\/[\x21-\x7e]+$/.test(url) || /[@?#]/.test(url) || host === "") {
    invalid(`${field} must be an http:// or https:// URL with a host, without credentials, query or fragment`);
  }
  return url;
}

function clamp(value: number, min: number, max: number): number {
  return Math.min(Math.max(value, min), max);
}

function hex(value: unknown, field: string, length: number): string {
  if (typeof value !== "string" || !new RegExp(`^[0-9a-f]{${length}}$`).test(value)) {
    invalid(`${field} must be ${length} lowercase hex characters`);
  }
  return value;
}

function flag(value: unknown, field: string): boolean {
  if (typeof value !== "boolean") invalid(`${field} must be true or false`);
  return value;
}

export function parseDrainRequest(body: string): DrainRequest {
  const request = fields(parseJson(body), "body", ["action", "instances", "reason", "by", "forMs", "nonce"]);
  const action = oneOf(request.action, "body.action", ["drain", "undrain"] as const);
  const common = {
    instances: absent(request.instances)
      ? null
      : list(request.instances, "body.instances", 1, LIMITS.MAX_INSTANCES, instanceName, (name) => name),
    by: text(request.by, "body.by", 1, FIELD_LIMITS.INSTANCE),
    nonce: hex(request.nonce, "body.nonce", 32),
  };
  if (action === "undrain") {
    if (request.reason !== null) invalid("body.reason must be null to undrain");
    if (request.forMs !== null) invalid("body.forMs must be null to undrain");
    return { ...common, action, reason: null, forMs: null };
  }
  if (request.reason === null) invalid("body.reason is required to drain");
  return {
    ...common,
    action,
    reason: text(request.reason, "body.reason", 1, FIELD_LIMITS.REASON),
    forMs:
      request.forMs === null
        ? null
        : amount(request.forMs, "body.forMs", FIELD_LIMITS.MIN_DRAIN_MS, FIELD_LIMITS.MAX_DRAIN_MS),
  };
}

/** The fleet query's body: `{}`, or `{cursor}` (null: the first page) to page on. */
export function parseFleetRequest(body: string): { cursor: string | null } {
  const request = fields(parseJson(body), "body", [], ["cursor"]);
  return { cursor: absent(request.cursor) ? null : text(request.cursor, "body.cursor", 1, FIELD_LIMITS.CURSOR) };
}

function parseJson(body: string): unknown {
  try {
    return JSON.parse(body);
  } catch {
    invalid("body must be JSON text");
  }
}

/** Optional keys may be absent or null. */
function absent(value: unknown): boolean {
  return value === undefined || value === null;
}

function parseHello(value: unknown): Map<string, string> | null {
  if (absent(value)) return null;
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
  if (absent(value)) return null;
  return text(value, "body.heartbeat", 0, FIELD_LIMITS.HEARTBEAT);
}

function parseResult(value: unknown, field: string): WireResult {
  const result = fields(value, field, RESULT_KEYS);
  return {
    check: checkName(result.check, `${field}.check`),
    fingerprint: checkName(result.fingerprint, `${field}.fingerprint`),
    status: oneOf(result.status, `${field}.status`, STATUSES) as Status,
    ageMs: age(result.ageMs, `${field}.ageMs`),
    latencyMs: amount(result.latencyMs, `${field}.latencyMs`, 0, FIELD_LIMITS.MAX_LATENCY_MS),
    output: text(result.output, `${field}.output`, 0, LIMITS.MAX_OUTPUT),
    consecutiveFailures: count(result.consecutiveFailures, `${field}.consecutiveFailures`),
    consecutiveSuccesses: count(result.consecutiveSuccesses, `${field}.consecutiveSuccesses`),
    lastSuccessAgeMs:
      result.lastSuccessAgeMs === null ? null : age(result.lastSuccessAgeMs, `${field}.lastSuccessAgeMs`),
  };
}

function parseSummary(value: unknown): Summary {
  const summary = fields(value, "body.summary", ["ready", "reasons", "failing"]);
  if (typeof summary.ready !== "boolean") invalid("body.summary.ready must be true or false");
  const reason = (item: unknown, field: string) => text(item, field, 0, FIELD_LIMITS.REASON);
  return {
    ready: summary.ready,
    reasons: list(summary.reasons, "body.summary.reasons", 0, FIELD_LIMITS.MAX_REASONS, reason),
    failing: checkNames(summary.failing, "body.summary.failing"),
  };
}

function parsePanic(value: unknown): Panic {
  const panic = fields(value, "body.panic", ["failing", "holdMs"]);
  return {
    failing: checkNames(panic.failing, "body.panic.failing"),
    holdMs: Math.min(
      amount(panic.holdMs, "body.panic.holdMs", FIELD_LIMITS.MIN_HOLD_MS, FIELD_LIMITS.MAX_HOLD_MS),
      FIELD_LIMITS.HOLD_CLAMP_MS,
    ),
  };
}

function parseShared(value: unknown, field: string): SharedCheck {
  const entry = fields(value, field, ["check", "fingerprint", "leaseMs"], ["result"]);
  const shared = {
    check: checkName(entry.check, `${field}.check`),
    fingerprint: checkName(entry.fingerprint, `${field}.fingerprint`),
    leaseMs: Math.min(
      amount(entry.leaseMs, `${field}.leaseMs`, FIELD_LIMITS.MIN_HOLD_MS, FIELD_LIMITS.MAX_HOLD_MS),
      FIELD_LIMITS.HOLD_CLAMP_MS,
    ),
    result: absent(entry.result) ? null : parseResult(entry.result, `${field}.result`),
  };
  if (shared.result !== null && shared.result.check !== shared.check) {
    invalid(`${field}.result.check must be ${field}.check`);
  }
  if (shared.result !== null && shared.result.fingerprint !== shared.fingerprint) {
    invalid(`${field}.result.fingerprint must be ${field}.fingerprint`);
  }
  return shared;
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
    invalid(`${field} has an unknown key (allowed: ${allowed.join(", ") || "none"})`);
  }
  const missing = required.find((key) => !Object.hasOwn(object, key));
  if (missing !== undefined) invalid(`${field}.${missing} is missing`);
  return object;
}

/**
 * A JSON array of `min` to `max` items, each parsed by `item`; with `key`, no two items may have
 * the same key (a check named twice, an instance named twice).
 */
function list<T>(
  value: unknown,
  field: string,
  min: number,
  max: number,
  item: (value: unknown, field: string) => T,
  key?: (item: T) => string,
): T[] {
  if (!Array.isArray(value)) invalid(`${field} must be a JSON array`);
  if (value.length < min || value.length > max) invalid(`${field} must hold ${min} to ${max} items`);
  const seen = new Set<string>();
  return value.map((element: unknown, i) => {
    const parsed = item(element, `${field}[${i}]`);
    if (key !== undefined) {
      if (seen.has(key(parsed))) invalid(`${field}[${i}] repeats an earlier item's name`);
      seen.add(key(parsed));
    }
    return parsed;
  });
}

/** Unique check names: at most MAX_CHECKS. */
function checkNames(value: unknown, field: string): string[] {
  return list(value, field, 0, LIMITS.MAX_CHECKS, checkName, (name) => name);
}

function checkName(value: unknown, field: string): string {
  return text(value, field, 1, FIELD_LIMITS.NAME);
}

function instanceName(value: unknown, field: string): string {
  return text(value, field, 1, FIELD_LIMITS.INSTANCE);
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

function oneOf<T extends string>(value: unknown, field: string, options: readonly T[]): T {
  if (typeof value !== "string" || !options.includes(value as T))
    invalid(`${field} must be one of ${options.join(", ")}`);
  return value as T;
}
