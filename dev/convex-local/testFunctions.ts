/**
 * Test-only functions and schema for server.test.ts and sync_ws.test.ts (passed to
 * `createConvexLocal` as `functions: { notes, tallies }, schema: testSchema`; never served by
 * `npm start`). `notes` has one user-defined index, so that the byte accounting can be checked
 * against hand-computed numbers; `tallies` is a second table, which no `notes` function reads.
 */
import {
  defineSchema,
  defineTable,
  makeFunctionReference,
  mutationGeneric,
  queryGeneric,
  type GenericDataModel,
  type GenericDatabaseReader,
} from "convex/server";
import { ConvexError, v } from "convex/values";

export const testSchema = defineSchema({
  notes: defineTable({ author: v.string(), body: v.string() }).index("by_author", ["author"]),
  tallies: defineTable({ name: v.string(), count: v.number() }).index("by_name", ["name"]),
});

const note = { author: v.string(), body: v.string() };
const byId = { id: v.id("notes") };

/** Module "notes": `notes:add`, `notes:byAuthor`, ... */
export const notes = {
  add: mutationGeneric({ args: note, handler: async (ctx, args) => await ctx.db.insert("notes", args) }),
  byAuthor: queryGeneric({
    args: { author: v.string() },
    handler: async (ctx, { author }) =>
      await ctx.db
        .query("notes")
        .withIndex("by_author", (q) => q.eq("author", author))
        .collect(),
  }),
  get: queryGeneric({ args: byId, handler: async (ctx, { id }) => await ctx.db.get(id) }),
  scan: queryGeneric({ args: {}, handler: async (ctx) => await ctx.db.query("notes").collect() }),
  rewrite: mutationGeneric({
    args: { ...byId, body: v.string() },
    handler: async (ctx, { id, body }) => await ctx.db.patch(id, { body }),
  }),
  remove: mutationGeneric({ args: byId, handler: async (ctx, { id }) => await ctx.db.delete(id) }),
  /** Inserts, then patches the same document: Convex commits (and bills) it once. */
  addAndRewrite: mutationGeneric({
    args: { ...note, rewritten: v.string() },
    handler: async (ctx, { author, body, rewritten }) => {
      const id = await ctx.db.insert("notes", { author, body });
      await ctx.db.patch(id, { body: rewritten });
    },
  }),
  addThenFail: mutationGeneric({
    args: note,
    handler: async (ctx, args) => {
      await ctx.db.insert("notes", args);
      throw new Error("boom");
    },
  }),
  refuse: mutationGeneric({
    args: {},
    handler: async () => {
      throw new ConvexError({ code: "refused", message: "no" });
    },
  }),
  /** Writes 17 documents of about 1 MB: over the 16 MiB a transaction may write. */
  writeTooMuch: mutationGeneric({
    args: {},
    handler: async (ctx) => {
      for (let i = 0; i < 17; i++) await ctx.db.insert("notes", { author: "big", body: "x".repeat(1_000_000) });
    },
  }),
  /** The oldest note of `author` (`.first()` stops after one document). */
  firstByAuthor: queryGeneric({
    args: { author: v.string() },
    handler: async (ctx, { author }) =>
      await ctx.db
        .query("notes")
        .withIndex("by_author", (q) => q.eq("author", author))
        .first(),
  }),
  /** Authors from `from` on, newest first, at most `n`. */
  takeFrom: queryGeneric({
    args: { from: v.string(), n: v.number() },
    handler: async (ctx, { from, n }) =>
      await ctx.db
        .query("notes")
        .withIndex("by_author", (q) => q.gte("author", from))
        .order("desc")
        .take(n),
  }),
  page: queryGeneric({
    args: { cursor: v.union(v.string(), v.null()), numItems: v.number() },
    handler: async (ctx, { cursor, numItems }) => await ctx.db.query("notes").paginate({ cursor, numItems }),
  }),
  /** Reads a note and writes its body back with a suffix: the read-modify-write that conflicts. */
  bump: mutationGeneric({
    args: byId,
    handler: async (ctx, { id }) => {
      const note = await ctx.db.get(id);
      if (note !== null) await ctx.db.patch(id, { body: `${note.body}+` });
    },
  }),
  /** Moves a note to another author (its `by_author` key changes). */
  reassign: mutationGeneric({
    args: { ...byId, author: v.string() },
    handler: async (ctx, { id, author }) => await ctx.db.patch(id, { author }),
  }),
  /** Counts `author`'s notes and records the count as a new note: reads a range, inserts. */
  tally: mutationGeneric({
    args: { author: v.string() },
    handler: async (ctx, { author }) => {
      const all = await ctx.db
        .query("notes")
        .withIndex("by_author", (q) => q.eq("author", author))
        .collect();
      await ctx.db.insert("notes", { author: "tally", body: String(all.length) });
    },
  }),
  /** Inserts `n` small notes: over 8,000 is over Convex cloud's documents written per transaction. */
  addMany: mutationGeneric({
    args: { n: v.number() },
    handler: async (ctx, { n }) => {
      for (let i = 0; i < n; i++) await ctx.db.insert("notes", { author: "many", body: "" });
    },
  }),
  /** Reads every note of `author`, `times` times over (each read counts toward the limit). */
  readMany: queryGeneric({
    args: { author: v.string(), times: v.number() },
    handler: async (ctx, { author, times }) => {
      let total = 0;
      for (let i = 0; i < times; i++) {
        total += (
          await ctx.db
            .query("notes")
            .withIndex("by_author", (q) => q.eq("author", author))
            .collect()
        ).length;
      }
      return total;
    },
  }),
  /** A get then a patch of the same document; returns convex-test's own transaction metrics. */
  rewriteAndMeasure: mutationGeneric({
    args: { ...byId, body: v.string() },
    handler: async (ctx, { id, body }) => {
      await ctx.db.get(id);
      await ctx.db.patch(id, { body });
      return await ctx.meta.getTransactionMetrics();
    },
  }),
};

/** Module "tallies": `tallies:bump` (a mutation that returns the new count) and `tallies:get`. */
export const tallies = {
  bump: mutationGeneric({
    args: { name: v.string() },
    handler: async (ctx, { name }) => {
      const row = await ctx.db
        .query("tallies")
        .withIndex("by_name", (q) => q.eq("name", name))
        .unique();
      if (row === null) {
        await ctx.db.insert("tallies", { name, count: 1 });
        return 1;
      }
      await ctx.db.patch(row._id, { count: row.count + 1 });
      return row.count + 1;
    },
  }),
  get: queryGeneric({
    args: { name: v.string() },
    handler: async (ctx, { name }) => await countOf(ctx.db, name),
  }),
  /** Schedules `tallies:bump` at once: its commit is a scheduled function's. */
  bumpLater: mutationGeneric({
    args: { name: v.string() },
    handler: async (ctx, { name }) => {
      await ctx.scheduler.runAfter(0, makeFunctionReference<"mutation">("tallies:bump"), { name });
    },
  }),
  /** `tallies:get` behind a token, refused as health:watch refuses a wrong one. */
  guarded: queryGeneric({
    args: { name: v.string(), token: v.string() },
    handler: async (ctx, { name, token }) => {
      if (token !== "right") throw new ConvexError({ code: "unauthorized", message: "wrong token" });
      return await countOf(ctx.db, name);
    },
  }),
};

async function countOf(db: GenericDatabaseReader<GenericDataModel>, name: string): Promise<number> {
  const row = await db
    .query("tallies")
    .withIndex("by_name", (q) => q.eq("name", name))
    .unique();
  return (row?.count as number | undefined) ?? 0;
}
