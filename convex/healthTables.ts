/**
 * health-sidecar's tables. Spread them into any schema:
 *
 *   export default defineSchema({ ...healthTables, ...yourTables });
 *
 * None is called `cache`, so they sit beside the scaling guide's own table.
 *
 * Liveness is kept apart from the registry so that a steady-state sync touches one small document
 * with one index: Convex bills every write of a document for each of its user-defined index
 * entries (76 bytes plus the indexed values), and every read through an index for its key.
 */
import { defineTable } from "convex/server";
import { v } from "convex/values";

export const status = v.union(v.literal("pass"), v.literal("warn"), v.literal("fail"), v.literal("unknown"));

/** A check's result as stored, timed by the server's clock (rows of sidecarResults, shared results). */
export const resultFields = {
  status,
  observedAt: v.number(), // server ms (server now - ageMs)
  latencyMs: v.number(),
  output: v.string(),
  consecutiveFailures: v.number(),
  consecutiveSuccesses: v.number(),
  lastSuccessAt: v.union(v.number(), v.null()), // server ms
};

/** A drain request in an instance's mailbox (its heartbeat). */
export const drainFields = {
  reason: v.string(),
  by: v.string(), // who the caller says it is, e.g. "ops@bastion" (a claim, recorded as sent)
  key: v.optional(v.literal("operator")), // which key signed the request (drains before v3: absent)
  at: v.number(), // server ms of the request
  until: v.union(v.number(), v.null()), // server ms it ends, null: until undrained
};

export const healthTables = {
  /**
   * The registry: one document per instance name, written on `hello` or a re-registration, and
   * when the instance's summary changes (optional fields: documents written before stay valid).
   */
  sidecarInstances: defineTable({
    instance: v.string(),
    version: v.string(), // the sidecar's version
    heartbeat: v.id("sidecarHeartbeats"), // the instance's liveness document
    ready: v.optional(v.boolean()),
    reasons: v.optional(v.array(v.string())),
    failing: v.optional(v.array(v.string())),
  })
    .index("by_instance", ["instance"])
    .index("by_heartbeat", ["heartbeat"]),

  /**
   * Liveness: one document per instance, read and patched by every sync (by id: the caller sends
   * the id and token its hello gave). One index, by_liveUntil, so that dead instances are found
   * without a scan: a write costs the document (149 bytes) and that entry (85). It also carries
   * the drain in force (mirrored from the mailbox): the steady-state read delivers it for free,
   * and a sync's patch (a merge) leaves it in place.
   */
  sidecarHeartbeats: defineTable({
    seenAt: v.number(), // server ms of the last sync
    expiresAt: v.number(), // seenAt + ttlMs (server clock): the documents' retention
    // Counted in the fleet (live count, failing counts) while present: the last sync's time + 2
    // store periods + grace. Absent: not counted (left, never counted, or taken out once passed).
    liveUntil: v.optional(v.number()),
    drain: v.optional(v.object(drainFields)),
    // Set by the instance's last sync before it stopped: no longer counted in the fleet (its
    // results stay, for the warm start of its next start); cleared by its next sync.
    left: v.optional(v.literal(true)),
    // The holder's proof: the first 8 bytes of SHA-256(instance + "\n" + token), the token its
    // hello answered; later syncs must present the token (so a heartbeat is bound to one name).
    // Bytes, not hex, and `ts` not `lastTs`: every sync reads this document twice and writes it
    // once, so each byte here costs 3 bytes of bandwidth a sync (docs/convex.md, "Budget").
    tokenHash: v.optional(v.bytes()),
    ts: v.optional(v.number()), // the `ts` of the last accepted sync: a later one must be newer
  }).index("by_liveUntil", ["liveUntil"]),

  /** One row per (instance, check), written only when the result changes; lives as long as its instance. */
  sidecarResults: defineTable({
    instance: v.string(),
    check: v.string(),
    fingerprint: v.string(), // the check's definition hash (sidecar-computed, opaque here)
    ...resultFields,
  }).index("by_instance_check", ["instance", "check"]),

  /**
   * One row per (instance, panic check) failing there: written when the instance's set of
   * failing panic checks changes, counted (sidecarCounters) while its instance is.
   */
  sidecarFailing: defineTable({
    check: v.string(),
    instance: v.string(),
    until: v.number(), // server ms: when it started failing + the hold asked for (informative)
  }).index("by_instance_check", ["instance", "check"]),

  /**
   * Sharded counters: key "live" (counted instances) or "failing:<check>" (counted instances
   * failing a panic check), shard = a hash of the instance's name % COUNTER_SHARDS. Changed only
   * on join, leave, expiry and a change of an instance's failing panic checks, one shard each.
   */
  sidecarCounters: defineTable({
    key: v.string(),
    shard: v.number(),
    value: v.number(),
  }).index("by_key_shard", ["key", "shard"]),

  /**
   * The verdicts the fleet reads (sync answers, health:watch, health:fleet): one row per panic
   * check counted lately. Written only by health:recount (one writer, debounced), and only when
   * a number changes.
   */
  /**
   * The peers' ring (healthPeers.ts): a hello's `advertise` at the slot its name hashes to (64
   * slots); written by hellos and leaves only, read a few slots at a time by every sync answer.
   */
  sidecarPeers: defineTable({
    slot: v.number(),
    instance: v.string(),
    url: v.string(), // where the peers reach the instance's sidecar
    heartbeat: v.id("sidecarHeartbeats"), // for the sweep: gone with its instance
  }).index("by_slot", ["slot"]),

  sidecarVerdicts: defineTable({
    check: v.string(),
    failing: v.number(),
    live: v.number(),
    since: v.number(), // server ms: when `failing` last changed
    computedAt: v.number(), // server ms of the recount that wrote it
  }).index("by_check", ["check"]),

  /** One document: the live count as last recounted (every sync answer reads it). */
  sidecarLive: defineTable({ live: v.number() }),

  /** One document: whether a recount is scheduled (the first writer that finds none schedules it). */
  sidecarRecount: defineTable({ pending: v.boolean(), at: v.number() }),

  /**
   * An instance's mailbox, for health:watch: the hash of its token (written by its hello) and
   * the drain in force (written by drain and undrain, mirrored on the heartbeat for the sync).
   */
  sidecarMailbox: defineTable({
    instance: v.string(),
    heartbeat: v.id("sidecarHeartbeats"),
    tokenHash: v.string(),
    drain: v.optional(v.object(drainFields)),
  })
    .index("by_instance", ["instance"])
    .index("by_heartbeat", ["heartbeat"]),

  /** A shared check's status, written only when it changes (health:watch reads these, not results). */
  sidecarSharedStatus: defineTable({
    check: v.string(),
    fingerprint: v.string(),
    status,
    since: v.number(), // server ms of the change
  }).index("by_check_fingerprint", ["check", "fingerprint"]),

  /** Before v3: one row per panic check with its count. No longer written; the purge deletes them. */
  sidecarCensus: defineTable({
    check: v.string(),
    failing: v.number(),
    live: v.number(),
    computedAt: v.number(), // server ms of the last full count
  }).index("by_check", ["check"]),

  /** One row per shared check definition: who probes it for the fleet (the lease) and its latest result. */
  sidecarShared: defineTable({
    check: v.string(),
    fingerprint: v.string(),
    holder: v.string(), // the instance holding the lease
    leaseUntil: v.number(), // server ms
    result: v.union(v.null(), v.object(resultFields)),
  }).index("by_check_fingerprint", ["check", "fingerprint"]),

  /** The audit trail of drains: one row per instance per drain or undrain; never purged. */
  sidecarDrainLog: defineTable({
    instance: v.string(),
    action: v.union(v.literal("drain"), v.literal("undrain")),
    reason: v.union(v.string(), v.null()),
    by: v.string(), // the caller's claim, as sent
    key: v.optional(v.literal("operator")), // which key signed the call (rows before v3: absent)
    at: v.number(), // server ms
    until: v.union(v.number(), v.null()),
  }).index("by_instance_at", ["instance", "at"]),

  /** Nonces of accepted operator calls (drain, undrain), kept while their `ts` could be replayed. */
  sidecarNonces: defineTable({
    nonce: v.string(),
    expiresAt: v.number(), // server ms: the call's ts + TIMESTAMP_WINDOW_MS
  })
    .index("by_nonce", ["nonce"])
    .index("by_expiresAt", ["expiresAt"]),

  /** Registrations of new instance names, by minute, in JOIN_SHARDS buckets (a hash of the name). */
  sidecarJoins: defineTable({
    minute: v.number(), // floor(server ms / 60 000)
    shard: v.number(),
    count: v.number(),
  }).index("by_minute_shard", ["minute", "shard"]),
};
