/**
 * The byte formulas of bandwidth.ts against numbers worked out by hand from convex-backend's
 * source (crates/value/src/sorting.rs, crates/common/src/index.rs, crates/value/src/size.rs).
 */
import { defineSchema, defineTable } from "convex/server";
import { v } from "convex/values";
import { describe, expect, test } from "vitest";
import {
  indexCatalog,
  indexEntryBytes,
  indexKeyBytes,
  isUserIndex,
  readBytes,
  sortKeySize,
  writeBytes,
  type StoredDocument,
} from "./bandwidth";

const ID = "10000notes000000000000000000000x"; // 32 characters, as Convex's ids for user tables
const doc = (fields: Record<string, StoredDocument[string]>): StoredDocument => ({ ...fields, _id: ID, _creationTime: 1.5 });

describe("sort keys (index key bytes of a read)", () => {
  test.each([
    ["null", null, 1],
    ["a missing field", undefined, 1],
    ["a boolean", true, 1],
    ["a float", 3.25, 9],
    ["int64 0", 0n, 1],
    ["int64 127", 127n, 2],
    ["int64 -128", -128n, 2],
    ["int64 128", 128n, 3],
    ["int64 -32769", -32769n, 5],
    ["int64 2^31", 2n ** 31n, 9],
    ["a string", "alice", 7],
    ["a string with a NUL (escaped)", "a\0b", 6],
    ["a non-ASCII string (UTF-8 bytes)", "é", 4],
    ["bytes", new Uint8Array([0, 1]).buffer, 5],
    ["an array", [1, "a"], 1 + 9 + 3 + 1],
    ["an object", { ab: 1 }, 1 + 3 + 9 + 1],
  ])("%s", (_, value, bytes) => {
    expect(sortKeySize(value)).toBe(bytes);
  });

  test('index ["author"], author "alice": 7 + 9 (_creationTime) + 34 (_id) = 50 bytes', () => {
    expect(indexKeyBytes(doc({ author: "alice" }), ["author"])).toBe(50);
  });

  test("a missing indexed field still takes its tag; nested paths are followed", () => {
    expect(indexKeyBytes(doc({}), ["author"])).toBe(1 + 9 + 34);
    expect(indexKeyBytes(doc({ meta: { who: "al" } }), ["meta.who"])).toBe(4 + 9 + 34);
  });
});

describe("index entries (bytes of a write)", () => {
  test('index ["author"], author "alice": 76 + 7 = 83 bytes', () => {
    expect(indexEntryBytes(doc({ author: "alice" }), ["author"])).toBe(83);
  });

  test("a missing indexed field adds nothing", () => {
    expect(indexEntryBytes(doc({}), ["author"])).toBe(76);
  });
});

describe("documents", () => {
  const note = doc({ author: "alice", body: "hello" });

  test("read by id or scan: the document's size (2 + 38 + 23 + 14 + 12 = 89)", () => {
    expect(readBytes(note, null)).toBe(89);
  });

  test("read through an index: plus its key", () => {
    expect(readBytes(note, ["author"])).toBe(89 + 50);
  });

  test("written: the document plus one entry per user index", () => {
    expect(writeBytes(note, [["author"], ["author", "body"]])).toBe(89 + 83 + (76 + 7 + 7));
  });
});

describe("which indexes are billed", () => {
  test.each([
    ["notes", "by_author", true],
    ["notes", "by_id", false],
    ["notes", "by_creation_time", false],
    ["notes", "_internal", false],
    ["_scheduled_functions", "by_author", false],
  ])("%s.%s: %s", (table, index, billed) => {
    expect(isUserIndex(table, index)).toBe(billed);
  });

  test("the catalog lists each table's user indexes with their fields", () => {
    const schema = defineSchema({
      notes: defineTable({ author: v.string(), n: v.number() }).index("by_author", ["author"]).index("by_author_n", ["author", "n"]),
      plain: defineTable({ x: v.string() }),
    });
    const catalog = indexCatalog(schema);
    expect([...catalog.get("notes")!]).toEqual([
      ["by_author", ["author"]],
      ["by_author_n", ["author", "n"]],
    ]);
    expect(catalog.get("plain")!.size).toBe(0);
  });
});
