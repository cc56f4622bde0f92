/**
 * health-sidecar's tables. Spread them into any schema:
 *
 *   export default defineSchema({ ...healthTables, ...yourTables });
 *
 * None is called `cache`, so they sit beside the scaling guide's own table.
 *
 * Liveness is kept apart from the registry so that a steady-state sync touches one tiny document
 * with no index of its own: Convex bills every write of a document for each of its user-defined
 * index entries (76 bytes plus the indexed values), and every read through an index for its key.
 */
import { defineTable } from "convex/server";
import { v } from "convex/values";

export const status = v.union(v.literal("pass"), v.literal("warn"), v.literal("fail"), v.literal("unknown"));

export const healthTables = {
  /** The registry: one document per instance name, written only on `hello` or a re-registration. */
  sidecarInstances: defineTable({
    instance: v.string(),
    version: v.string(), // the sidecar's version
    heartbeat: v.id("sidecarHeartbeats"), // the instance's liveness document
  })
    .index("by_instance", ["instance"])
    .index("by_heartbeat", ["heartbeat"]),

  /**
   * Liveness: one document per instance, read and patched by every sync (by id: the caller sends
   * the id its previous answer gave). No user-defined index, on purpose: a write then costs only
   * the document itself (98 bytes). Keep it minimal; the fleet features to come will add the
   * drain requests for the instance here, so that the instance sees them in the steady-state read
   * it already pays for.
   */
  sidecarHeartbeats: defineTable({
    seenAt: v.number(), // server ms of the last sync
    expiresAt: v.number(), // seenAt + ttlMs (server clock)
  }),

  /** One row per (instance, check), written only when the result changes; lives as long as its instance. */
  sidecarResults: defineTable({
    instance: v.string(),
    check: v.string(),
    fingerprint: v.string(), // the check's definition hash (sidecar-computed, opaque here)
    status,
    observedAt: v.number(), // server ms (server now - ageMs)
    latencyMs: v.number(),
    output: v.string(),
    consecutiveFailures: v.number(),
    consecutiveSuccesses: v.number(),
    lastSuccessAt: v.union(v.number(), v.null()), // server ms
  }).index("by_instance_check", ["instance", "check"]),
};
