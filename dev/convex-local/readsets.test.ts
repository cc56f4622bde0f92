/**
 * Read sets and write sets of real function runs (testFunctions.ts through convex-test, observed
 * as the stand-in observes them) and the OCC test `intersects`, against what Convex records
 * (crates/database/src/reads.rs, query/index_range.rs).
 */
import { convexTest } from "convex-test";
import { makeFunctionReference } from "convex/server";
import type { Value } from "convex/values";
import { beforeEach, describe, expect, test } from "vitest";
import { indexCatalog, type StoredDocument } from "./bandwidth";
import { contains, documentWrite, findConflict, intersects, type WriteSet } from "./readsets";
import { installDatabaseObserver, observeDatabase, withCommitHooks } from "./syscalls";
import { notes, testSchema } from "./testFunctions";
import { TransactionRecorder, type TransactionRecord } from "./transactions";

const catalog = indexCatalog(testSchema);

function deployment() {
  const t = convexTest({
    schema: testSchema,
    modules: {
      "convex/_generated/server.js": () => import("../../convex/_generated/server.js"),
      "convex/notes.ts": async () => withCommitHooks(notes),
    },
  });
  installDatabaseObserver();
  return t;
}

let t: ReturnType<typeof deployment>;
let records: { record: TransactionRecord; committed: boolean }[];

beforeEach(() => {
  t = deployment();
  records = [];
});

/** Runs `notes:<name>` observed; returns its value and the record of its transaction. */
async function run(kind: "query" | "mutation", name: string, args: Record<string, Value>) {
  const recorder = new TransactionRecorder(catalog, {
    committing: () => undefined,
    finished: (record, committed) => records.push({ record, committed }),
  });
  const value = await observeDatabase(recorder, () =>
    kind === "query"
      ? t.query(makeFunctionReference<"query">(`notes:${name}`), args)
      : t.mutation(makeFunctionReference<"mutation">(`notes:${name}`), args),
  );
  return { value, record: records.at(-1)!.record };
}

const add = async (author: string, body = "b") => (await run("mutation", "add", { author, body })).value as string;
const doc = async (id: string) => (await t.run(async (ctx) => await ctx.db.get(id as never))) as StoredDocument;

/** The write set of a document changed from `old` to `now` (null: inserted / deleted). */
const writing = (id: string, old: StoredDocument | null, now: StoredDocument | null): WriteSet => ({
  writes: [documentWrite(catalog, "notes", id, old, now)],
});
/** A document of `author` created after every existing one. */
const later = (author: string): StoredDocument => ({ author, body: "x", _id: "99999notes", _creationTime: Date.now() + 1e6 });

describe("read sets", () => {
  test("db.get reads the point of by_id: a write to that document intersects, to another one not", async () => {
    const a = await add("alice");
    const b = await add("bob");
    const { record } = await run("query", "get", { id: a });
    expect(record.readSet.reads).toEqual([expect.objectContaining({ table: "notes", index: "by_id", upTo: null })]);
    const docA = await doc(a);
    expect(intersects(record.readSet, writing(a, docA, { ...docA, body: "new" }))).toBe(true);
    expect(intersects(record.readSet, writing(b, await doc(b), null))).toBe(false);
    expect(intersects(record.readSet, writing("99999notes", null, later("alice")))).toBe(false);
  });

  test("an index range read to its end covers the whole range: a new document in it intersects", async () => {
    await add("alice");
    const { record } = await run("query", "byAuthor", { author: "alice" });
    expect(record.readSet.reads[0]).toMatchObject({ index: "by_author", upTo: null });
    expect(intersects(record.readSet, writing("99999notes", null, later("alice")))).toBe(true);
    expect(intersects(record.readSet, writing("99999notes", null, later("bob")))).toBe(false);
  });

  test("a document moved out of a range read intersects through its old key", async () => {
    const a = await add("alice");
    const { record } = await run("query", "byAuthor", { author: "alice" });
    const old = await doc(a);
    expect(intersects(record.readSet, writing(a, old, { ...old, author: "zed" }))).toBe(true);
  });

  test(".first() covers up to the key it returned: a later document in the range does not intersect", async () => {
    const first = await add("alice");
    await add("alice");
    const { value, record } = await run("query", "firstByAuthor", { author: "alice" });
    expect((value as StoredDocument)._id).toBe(first);
    const [read] = record.readSet.reads;
    expect(read.upTo).not.toBeNull();
    expect(intersects(record.readSet, writing("99999notes", null, later("alice")))).toBe(false);
    const old = await doc(first);
    expect(intersects(record.readSet, writing(first, old, { ...old, body: "x" }))).toBe(true);
  });

  test(".first() that finds nothing read the whole (empty) range", async () => {
    await add("bob");
    const { value, record } = await run("query", "firstByAuthor", { author: "alice" });
    expect(value).toBeNull();
    expect(record.readSet.reads[0].upTo).toBeNull();
    expect(intersects(record.readSet, writing("99999notes", null, later("alice")))).toBe(true);
  });

  test(".order('desc').take(n) stopping early covers from the range's top down to the last key", async () => {
    for (const author of ["a", "b", "c", "d"]) await add(author);
    const { record } = await run("query", "takeFrom", { from: "b", n: 2 });
    const [read] = record.readSet.reads;
    expect(read.upTo?.[0]).toBe("c");
    expect(contains(read, ["d", 0, "x"])).toBe(true);
    expect(contains(read, ["c", Number.MAX_VALUE, "x"])).toBe(true);
    expect(contains(read, ["b", 0, "x"])).toBe(false);
    expect(contains(read, ["a", 0, "x"])).toBe(false);
  });

  test("a full table scan reads by_creation_time whole: any insert into the table intersects", async () => {
    await add("alice");
    const { record } = await run("query", "scan", {});
    expect(record.readSet.reads[0]).toMatchObject({ index: "by_creation_time", range: [], upTo: null });
    expect(intersects(record.readSet, writing("99999notes", null, later("zed")))).toBe(true);
  });

  test("a page covers from its cursor to its continue cursor", async () => {
    const ids: string[] = [];
    for (const author of ["a", "b", "c", "d", "e"]) ids.push(await add(author));
    const first = await run("query", "page", { cursor: null, numItems: 2 });
    const [read1] = first.record.readSet.reads;
    const docs = await Promise.all(ids.map(doc));
    const touch = (i: number) => writing(ids[i], docs[i], { ...docs[i], body: "changed" });
    expect(intersects(first.record.readSet, touch(1))).toBe(true);
    expect(intersects(first.record.readSet, touch(2))).toBe(false);
    expect(read1.after).toBeNull();
    const { continueCursor } = first.value as { continueCursor: string };
    const second = await run("query", "page", { cursor: continueCursor, numItems: 2 });
    expect(intersects(second.record.readSet, touch(1))).toBe(false);
    expect(intersects(second.record.readSet, touch(2))).toBe(true);
  });
});

describe("write sets", () => {
  test("a patch records the document's old and new key in every index of its table", async () => {
    const a = await add("alice");
    const before = await doc(a);
    const { record } = await run("mutation", "reassign", { id: a, author: "bob" });
    expect(record.writeSet.writes).toHaveLength(1);
    const [write] = record.writeSet.writes;
    expect(write).toMatchObject({ table: "notes", id: a });
    expect(write.keys.by_author).toEqual({ old: ["alice", before._creationTime, a], new: ["bob", before._creationTime, a] });
    expect(write.keys.by_id).toEqual({ old: [a], new: [a] });
    expect(Object.keys(write.keys).sort()).toEqual(["by_author", "by_creation_time", "by_id"]);
    expect(record).toMatchObject({ fn: "notes:reassign", documentsWritten: 1, documentsRead: 1 });
  });

  test("an insert has no old key, a delete no new key; insert-then-patch is one write", async () => {
    const inserted = await run("mutation", "addAndRewrite", { author: "al", body: "a", rewritten: "b" });
    expect(inserted.record.writeSet.writes).toHaveLength(1);
    const id = inserted.record.writeSet.writes[0].id;
    expect(inserted.record.writeSet.writes[0].keys.by_id).toEqual({ old: null, new: [id] });
    const removed = await run("mutation", "remove", { id });
    expect(removed.record.writeSet.writes[0].keys.by_id).toEqual({ old: [id], new: null });
  });

  test("a rolled-back mutation is reported as not committed", async () => {
    await expect(run("mutation", "addThenFail", { author: "a", body: "b" })).rejects.toThrow("boom");
    expect(records.at(-1)).toMatchObject({ committed: false });
    expect(records.at(-1)!.record.writeSet.writes).toHaveLength(1);
  });

  test("two real transactions: a range read conflicts with an insert into its range, names it", async () => {
    await add("alice");
    const reader = (await run("mutation", "tally", { author: "alice" })).record;
    const writer = (await run("mutation", "add", { author: "alice", body: "new" })).record;
    const other = (await run("mutation", "add", { author: "bob", body: "new" })).record;
    expect(findConflict(reader.readSet, writer.writeSet)).toEqual({ table: "notes", index: "by_author", id: writer.writeSet.writes[0].id });
    expect(intersects(reader.readSet, other.writeSet)).toBe(false);
  });
});
