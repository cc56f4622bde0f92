/**
 * indexes.ts narrows convex-test's candidates for an index range; the answers must stay what
 * convex-test answers: the same documents, in index order, through inserts, patches that move a
 * document between buckets, deletes, a transaction's own pending writes and a rollback.
 */
import { convexTest } from "convex-test";
import { beforeEach, expect, test } from "vitest";
import { installIndexes } from "./indexes";
import { testSchema } from "./testFunctions";

type Ctx = {
  db: {
    insert(table: string, doc: Record<string, unknown>): Promise<string>;
    patch(table: string, id: string, fields: Record<string, unknown>): Promise<void>;
    delete(table: string, id: string): Promise<void>;
    query(table: string): {
      withIndex(index: string, range: (q: { eq(f: string, v: unknown): unknown }) => unknown): {
        collect(): Promise<{ _id: string; body: string }[]>;
      };
      collect(): Promise<{ _id: string }[]>;
    };
  };
};

let t: ReturnType<typeof convexTest>;

beforeEach(() => {
  t = convexTest({ schema: testSchema, modules: { "convex/_generated/server.js": () => import("../../convex/_generated/server.js") } });
  installIndexes(t as never, testSchema);
});

const run = <T>(fn: (ctx: Ctx) => Promise<T>) => t.run(async (ctx) => await fn(ctx as unknown as Ctx)) as Promise<T>;
const bodies = (author: string) =>
  run(async (ctx) =>
    (await ctx.db.query("notes").withIndex("by_author", (q) => q.eq("author", author)).collect()).map((d) => d.body),
  );

test("an equality on the index's first field finds exactly that value's documents, in index order", async () => {
  await run(async (ctx) => {
    for (const [author, body] of [["ann", "1"], ["bob", "2"], ["ann", "3"], ["cy", "4"]]) {
      await ctx.db.insert("notes", { author, body });
    }
    await ctx.db.insert("tallies", { name: "ann", count: 1 }); // same string, another table
  });
  expect(await bodies("ann")).toEqual(["1", "3"]);
  expect(await bodies("bob")).toEqual(["2"]);
  expect(await bodies("nobody")).toEqual([]);
  expect((await run((ctx) => ctx.db.query("notes").collect())).length).toBe(4);
});

test("a patch moves a document between values, a delete takes it out", async () => {
  const [a, b] = await run(async (ctx) => [
    await ctx.db.insert("notes", { author: "ann", body: "1" }),
    await ctx.db.insert("notes", { author: "ann", body: "2" }),
  ]);
  await run((ctx) => ctx.db.patch("notes", a, { author: "bob" }));
  expect(await bodies("ann")).toEqual(["2"]);
  expect(await bodies("bob")).toEqual(["1"]);
  await run((ctx) => ctx.db.delete("notes", b));
  expect(await bodies("ann")).toEqual([]);
});

test("a transaction sees its own pending writes; a rolled-back one leaves nothing", async () => {
  const seen = await run(async (ctx) => {
    await ctx.db.insert("notes", { author: "ann", body: "pending" });
    return (await ctx.db.query("notes").withIndex("by_author", (q) => q.eq("author", "ann")).collect()).map((d) => d.body);
  });
  expect(seen).toEqual(["pending"]);
  await expect(
    run(async (ctx) => {
      await ctx.db.insert("notes", { author: "zed", body: "lost" });
      throw new Error("roll back");
    }),
  ).rejects.toThrow("roll back");
  expect(await bodies("zed")).toEqual([]);
  expect(await bodies("ann")).toEqual(["pending"]);
});
