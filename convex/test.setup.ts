/// <reference types="vite/client" />
/**
 * Shared by the tests (Convex skips files with more than one dot in their name, so this one is
 * never deployed): the function modules for convex-test, a signer that follows the spec with
 * node's crypto (independent of the Web Crypto verifier in healthProtocol.ts), and the helpers
 * health.test.ts and fleet.test.ts share: signed calls, payloads, snapshots of every table.
 */
import { createHash, createHmac, randomBytes } from "node:crypto";
import { convexTest } from "convex-test";
import { ConvexError } from "convex/values";
import type { WithoutSystemFields } from "convex/server";
import { afterEach, beforeEach, expect, vi } from "vitest";
import { api } from "./_generated/api";
import type { Doc, Id } from "./_generated/dataModel";
import type { MutationCtx } from "./_generated/server";
import schema from "./schema";

export const modules = import.meta.glob("./**/*.*s");

/** Lowercase hex HMAC-SHA256 of a signed call, keyed by the UTF-8 bytes of `secret`. */
export function sign(secret: string, path: string, instance: string, ts: number, body: string): string {
  const message = `health-sidecar/1\n${path}\n${instance}\n${String(ts)}\n${body}`;
  return createHmac("sha256", Buffer.from(secret, "utf8")).update(message, "utf8").digest("hex");
}

export const SECRET = "test-secret-0123456789";
export const OPERATOR_SECRET = "test-operator-secret-0123456789";
export const NOW = 1_795_899_714_996;
export const SECOND = 1000;
export const MINUTE = 60 * SECOND;
export const HOUR = 60 * MINUTE;

/** Each test of the calling file runs at NOW (fake timers) with the sidecars' secret set; both undone after. */
export function atNow(): void {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(NOW);
    vi.stubEnv("HEALTH_SIDECAR_SECRET", SECRET);
  });
  afterEach(() => {
    vi.useRealTimers();
    vi.unstubAllEnvs();
  });
}

export type T = ReturnType<typeof setup>;
/** convex-test with this schema and these functions, under Convex's transaction limits (or tighter ones). */
export const setup = (transactionLimits: Parameters<typeof convexTest>[0]["transactionLimits"] = true) =>
  convexTest({ schema, modules, transactionLimits });

// ---------------------------------------------------------------------------------------------
// Calls, signed as the sidecar (and its CLI) signs them.

export interface Call {
  instance: string;
  ts: number;
  sig: string;
  body: string;
}

// What a sidecar keeps between calls: its last ts (each call's must be newer) and the token its
// last hello answered (`sync` records it). Reset before each test.
let lastTs = 0;
const tokens = new Map<string, string>();
beforeEach(() => {
  lastTs = 0;
  tokens.clear();
  // Every test file stubs HEALTH_SIDECAR_SECRET itself; the operator's key is set here.
  vi.stubEnv("HEALTH_SIDECAR_OPERATOR_SECRET", OPERATOR_SECRET);
});

/** The token the last hello of `instance` answered (through `sync`). */
export const tokenOf = (instance: string): string | undefined => tokens.get(instance);

/** A new nonce for an operator call: 32 lowercase hex. */
export const nonce = (): string => randomBytes(16).toString("hex");

/**
 * A signed call (of health:sync unless `path` says otherwise); `payload` is JSON-encoded unless it
 * is already text. As the sidecar and its CLI sign: `ts` newer than the last call's (same ms: one
 * more), the operator key for drain and fleet, a sync's body with a `heartbeat` carries the
 * instance's token unless it names one (`token: undefined` in it: none), a drain's a new nonce.
 */
export function signed(
  instance: string,
  payload: object | string,
  { ts, secret, path = "health:sync" }: { ts?: number; secret?: string; path?: string } = {},
): Call {
  if (ts === undefined) {
    ts = Math.max(Date.now(), lastTs + 1);
    lastTs = ts;
  }
  secret ??= path === "health:sync" ? SECRET : OPERATOR_SECRET;
  let content: object | string = payload;
  if (typeof payload === "object" && path === "health:sync" && "heartbeat" in payload && !("token" in payload)) {
    content = { ...payload, token: tokens.get(instance) ?? null };
  }
  if (typeof payload === "object" && path === "health:drain" && !("nonce" in payload)) {
    content = { ...payload, nonce: nonce() };
  }
  const body = typeof content === "string" ? content : JSON.stringify(content);
  return { instance, ts, body, sig: sign(secret, path, instance, ts, body) };
}

export function result(check: string, overrides: Record<string, unknown> = {}) {
  return {
    check,
    fingerprint: `fp-${check}`,
    status: "pass",
    ageMs: 1000,
    latencyMs: 12.5,
    output: "200 success",
    consecutiveFailures: 0,
    consecutiveSuccesses: 4,
    lastSuccessAgeMs: 1000,
    ...overrides,
  };
}

export function payload(overrides: Record<string, unknown> = {}) {
  return { version: "0.2.0", ttlMs: 5 * MINUTE, results: [], ...overrides };
}

export const hello = (checks: string[], fingerprint = (c: string) => `fp-${c}`) =>
  Object.fromEntries(checks.map((c) => [c, fingerprint(c)]));

/** A health:sync; a hello's token is kept for the instance's later calls (see `signed`). */
export async function sync(t: T, call: Call) {
  const answer = await t.mutation(api.health.sync, call);
  if (answer.token !== null) tokens.set(call.instance, answer.token);
  return answer;
}

/** Every table of the schema, whole documents (ids and creation times included). */
export const snapshot = (t: T) =>
  t.run(async (ctx) => ({
    instances: await ctx.db.query("sidecarInstances").collect(),
    heartbeats: await ctx.db.query("sidecarHeartbeats").collect(),
    results: await ctx.db.query("sidecarResults").collect(),
    failing: await ctx.db.query("sidecarFailing").collect(),
    census: await ctx.db.query("sidecarCensus").collect(),
    shared: await ctx.db.query("sidecarShared").collect(),
    drainLog: await ctx.db.query("sidecarDrainLog").collect(),
    nonces: await ctx.db.query("sidecarNonces").collect(),
    joins: await ctx.db.query("sidecarJoins").collect(),
    counters: await ctx.db.query("sidecarCounters").collect(),
    verdicts: await ctx.db.query("sidecarVerdicts").collect(),
    live: await ctx.db.query("sidecarLive").collect(),
    mailboxes: await ctx.db.query("sidecarMailbox").collect(),
    sharedStatus: await ctx.db.query("sidecarSharedStatus").collect(),
  }));

/** A snapshot with nothing in it. */
export const EMPTY = {
  instances: [],
  heartbeats: [],
  results: [],
  failing: [],
  census: [],
  shared: [],
  drainLog: [],
  nonces: [],
  joins: [],
  counters: [],
  verdicts: [],
  live: [],
  mailboxes: [],
  sharedStatus: [],
};

/** The heartbeat id the registry holds for `instance` (what its last answer gave). */
export async function heartbeatOf(t: T, instance: string): Promise<string> {
  const registry = (await snapshot(t)).instances.find((i) => i.instance === instance);
  if (registry === undefined) throw new Error(`no registry document for ${instance}`);
  return registry.heartbeat;
}

/** The stored form of an instance's token, by the spec (node's crypto, not the functions' code). */
export const hashToken = (instance: string, token: string): string =>
  createHash("sha256").update(`${instance}\n${token}`, "utf8").digest("hex").slice(0, 16);

/** The heartbeat's form of the hash: its 8 bytes (the mailbox keeps the 16 hex of `hashToken`). */
export const beatToken = (instance: string, token: string): ArrayBuffer =>
  new Uint8Array(Buffer.from(hashToken(instance, token), "hex")).buffer;

/** A new token for `instance`, kept for `signed`; returns its stored form (for a planted heartbeat). */
export function plantToken(instance: string): ArrayBuffer {
  const token = randomBytes(32).toString("hex");
  tokens.set(instance, token);
  return beatToken(instance, token);
}

/**
 * Registers `instance` as a hello would, with a heartbeat that expires at `expiresAt`; returns the
 * heartbeat. Its token is kept for `signed` (a random one).
 */
export async function enroll(ctx: MutationCtx, instance: string, expiresAt: number): Promise<Id<"sidecarHeartbeats">> {
  const tokenHash = plantToken(instance);
  const heartbeat = await ctx.db.insert("sidecarHeartbeats", { seenAt: expiresAt - MINUTE, expiresAt, tokenHash });
  await ctx.db.insert("sidecarInstances", { instance, version: "0.2.0", heartbeat });
  return heartbeat;
}

/** A stored row of `instance` for `check`, as a sync of `result(check)` at NOW writes it. */
export function storedRow(instance: string, check: string): WithoutSystemFields<Doc<"sidecarResults">> {
  const { ageMs, lastSuccessAgeMs, ...rest } = result(check);
  return { instance, ...rest, status: "pass", observedAt: NOW - ageMs, lastSuccessAt: NOW - lastSuccessAgeMs };
}

/** The ConvexError a call was refused with (the test fails when it was not refused). */
export async function refusal(promise: Promise<unknown>): Promise<ConvexError<{ code: string; message: string }>> {
  const error = await promise.then(
    () => expect.unreachable("the call should have been refused"),
    (e: unknown) => e,
  );
  expect(error).toBeInstanceOf(ConvexError);
  return error as ConvexError<{ code: string; message: string }>;
}
