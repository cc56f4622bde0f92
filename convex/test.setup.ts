/// <reference types="vite/client" />
/**
 * Shared by the tests (Convex skips files with more than one dot in their name, so this one is
 * never deployed): the function modules for convex-test, a signer that follows the spec with
 * node's crypto (independent of the Web Crypto verifier in healthProtocol.ts), and the helpers
 * health.test.ts and fleet.test.ts share: signed calls, payloads, snapshots of every table.
 */
import { createHmac } from "node:crypto";
import { convexTest } from "convex-test";
import { ConvexError } from "convex/values";
import type { WithoutSystemFields } from "convex/server";
import { expect } from "vitest";
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
export const NOW = 1_795_899_714_996;
export const SECOND = 1000;
export const MINUTE = 60 * SECOND;
export const HOUR = 60 * MINUTE;

export type T = ReturnType<typeof setup>;
export const setup = () => convexTest({ schema, modules, transactionLimits: true });

// ---------------------------------------------------------------------------------------------
// Calls, signed as the sidecar (and its CLI) signs them.

export interface Call {
  instance: string;
  ts: number;
  sig: string;
  body: string;
}

/** A signed call (of health:sync unless `path` says otherwise); `payload` is JSON-encoded unless it is already text. */
export function signed(
  instance: string,
  payload: object | string,
  { ts = Date.now(), secret = SECRET, path = "health:sync" }: { ts?: number; secret?: string; path?: string } = {},
): Call {
  const body = typeof payload === "string" ? payload : JSON.stringify(payload);
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

export const sync = (t: T, call: Call) => t.mutation(api.health.sync, call);

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
  }));

/** A snapshot with nothing in it. */
export const EMPTY = { instances: [], heartbeats: [], results: [], failing: [], census: [], shared: [], drainLog: [] };

/** The heartbeat id the registry holds for `instance` (what its last answer gave). */
export async function heartbeatOf(t: T, instance: string): Promise<string> {
  const registry = (await snapshot(t)).instances.find((i) => i.instance === instance);
  if (registry === undefined) throw new Error(`no registry document for ${instance}`);
  return registry.heartbeat;
}

/** Registers `instance` as a hello would, with a heartbeat that expires at `expiresAt`; returns the heartbeat. */
export async function enroll(ctx: MutationCtx, instance: string, expiresAt: number): Promise<Id<"sidecarHeartbeats">> {
  const heartbeat = await ctx.db.insert("sidecarHeartbeats", { seenAt: expiresAt - MINUTE, expiresAt });
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
