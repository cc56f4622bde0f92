import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";

export const status = v.union(
  v.literal("pass"),
  v.literal("warn"),
  v.literal("fail"),
  v.literal("unknown"),
);

/** One check result as the sidecar reports it (no instance, no expiry). */
export const resultFields = {
  check: v.string(),
  status,
  observedAt: v.number(), // ms since the epoch
  latencyMs: v.number(),
  output: v.string(),
  consecutiveFailures: v.number(),
  consecutiveSuccesses: v.number(),
  lastSuccessAt: v.union(v.number(), v.null()),
};

/** A stored result, as the public functions return it (no `_id`/`_creationTime`). */
export const rowFields = {
  instance: v.string(),
  ...resultFields,
  expiresAt: v.number(), // ms since the epoch
};

export default defineSchema({
  // Not called `cache`: apps built from the scaling guide already have one.
  sidecarHealth: defineTable(rowFields)
    .index("by_instance_check", ["instance", "check"])
    .index("by_check_observedAt", ["check", "observedAt"])
    .index("by_expiresAt", ["expiresAt"]),

  sidecarLeases: defineTable({
    check: v.string(),
    holder: v.string(),
    expiresAt: v.number(),
  })
    .index("by_check", ["check"])
    .index("by_expiresAt", ["expiresAt"]),
});
