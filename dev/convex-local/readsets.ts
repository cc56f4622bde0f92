/**
 * Read sets and write sets of the stand-in's transactions, as Convex defines them, and the test
 * of whether a commit's writes touch what another transaction read (the heart of Convex's
 * optimistic concurrency control).
 *
 * What Convex does (get-convex/convex-backend, crates/database/src):
 * - `reads.rs`: a transaction's `ReadSet` is, per index, a set of intervals of index keys.
 *   `db.get(id)` reads the point `[id]` of `by_id`; a table scan is an index range over
 *   `by_creation_time`; `withIndex(...)` is a range of that index. `ReadSet::overlaps_document`
 *   takes a written document's key in each index the transaction read from the document's table
 *   and asks whether an interval contains it; `writes_overlap_docs` tries the new and the old
 *   version of every written document (so moving a document into or out of a range conflicts).
 * - `query/index_range.rs`: a range read records, after each document it yields, the interval
 *   from the range's start up to that document's key (`initial_unfetched_interval.split(cursor)`),
 *   and the whole range once it is exhausted. So `.first()` / `.take(n)` that stops early covers
 *   up to the last key it returned; a scan that runs out covers the whole range; a filter is
 *   applied document by document above the range, so what it drops still advanced the cursor.
 * - `write_log.rs` / `committer.rs`: a commit is checked against every write committed after the
 *   transaction's begin timestamp; the first overlap is an OCC error naming the table and the
 *   written document (database.rs, `ConflictingReadWithWriteSource::into_error`).
 *
 * Index keys here are arrays of Convex values (the indexed fields, then `_creationTime`, then
 * `_id`), ordered by `compareValues` from `convex/values` (Convex's value order, the same order
 * convex-test sorts its indexes by), rather than Convex's byte encoding: same order, same answers.
 */
import { compareValues, jsonToConvex, type JSONValue, type Value } from "convex/values";
import type { IndexCatalog, StoredDocument } from "./bandwidth.js";

/** A document's key in one index: its indexed values, `_creationTime`, `_id` (undefined: a missing field). */
export type IndexKey = (Value | undefined)[];

/** One range expression of `withIndex` (`q.eq("author", "alice").gt("n", 3)`). */
export interface RangeBound {
  type: "Eq" | "Gt" | "Gte" | "Lt" | "Lte";
  fieldPath: string;
  value: Value | undefined;
}

/** One interval of one index that a transaction read. */
export interface IndexRead {
  table: string;
  /** `by_id`, `by_creation_time` or a user index. */
  index: string;
  /** The key's fields: `["_id"]`, `["_creationTime", "_id"]` or the user fields + those two. */
  fields: string[];
  range: RangeBound[];
  order: "asc" | "desc";
  /** Exclusive start in scan order (a pagination cursor), null: the range's start. */
  after: IndexKey | null;
  /** Inclusive end in scan order (the last key returned when the scan stopped early), null: the range's end. */
  upTo: IndexKey | null;
}

export interface ReadSet {
  reads: IndexRead[];
}

/** One document a transaction wrote: its keys before and after, in every index of its table. */
export interface DocumentWrite {
  table: string;
  id: string;
  /** Index name -> key of the document before the transaction (null: inserted) and after it (null: deleted). */
  keys: Record<string, { old: IndexKey | null; new: IndexKey | null }>;
}

export interface WriteSet {
  writes: DocumentWrite[];
}

/** Where a write met a read: Convex's `ConflictingRead` (the table, index and written document). */
export interface Conflict {
  table: string;
  index: string;
  id: string;
}

/** The fields of `index`'s key in `table` (null: an index the catalog does not know). */
export function indexFields(catalog: IndexCatalog, table: string, index: string): string[] | null {
  if (index === "by_id") return ["_id"];
  if (index === "by_creation_time") return ["_creationTime", "_id"];
  const fields = catalog.get(table)?.get(index);
  return fields === undefined ? null : [...fields, "_creationTime", "_id"];
}

/** Every index of `table` with its key fields: `by_id`, `by_creation_time` and the user indexes. */
export function tableIndexes(catalog: IndexCatalog, table: string): [string, string[]][] {
  const user = [...(catalog.get(table)?.keys() ?? [])];
  return ["by_id", "by_creation_time", ...user].map((index) => [index, indexFields(catalog, table, index)!]);
}

/** `doc`'s key in an index on `fields`. */
export function keyOf(doc: StoredDocument, fields: readonly string[]): IndexKey {
  return fields.map((field) => valueAt(doc, field));
}

/** The write of one document, from its version before the transaction and after it. */
export function documentWrite(
  catalog: IndexCatalog,
  table: string,
  id: string,
  old: StoredDocument | null,
  now: StoredDocument | null,
): DocumentWrite {
  const keys: DocumentWrite["keys"] = {};
  for (const [index, fields] of tableIndexes(catalog, table)) {
    keys[index] = { old: old === null ? null : keyOf(old, fields), new: now === null ? null : keyOf(now, fields) };
  }
  return { table, id, keys };
}

/** Whether `writeSet` (a commit) touches anything `readSet` read: the OCC test. */
export function intersects(readSet: ReadSet, writeSet: WriteSet): boolean {
  return findConflict(readSet, writeSet) !== null;
}

/** The first read of `readSet` that a write of `writeSet` falls into, as Convex reports it, or null. */
export function findConflict(readSet: ReadSet, writeSet: WriteSet): Conflict | null {
  for (const write of writeSet.writes) {
    for (const read of readSet.reads) {
      if (read.table !== write.table) continue;
      const keys = write.keys[read.index];
      if (keys === undefined) continue;
      for (const key of [keys.new, keys.old]) {
        if (key !== null && contains(read, key)) return { table: write.table, index: read.index, id: write.id };
      }
    }
  }
  return null;
}

/** Whether the interval `read` covers `key`. */
export function contains(read: IndexRead, key: IndexKey): boolean {
  for (const bound of read.range) {
    const position = read.fields.indexOf(bound.fieldPath);
    if (position < 0) return true; // a range on a field the index lacks: convex-test refuses it; count it as read
    const cmp = compare(key[position], bound.value);
    const inside =
      bound.type === "Eq" ? cmp === 0 : bound.type === "Gt" ? cmp > 0 : bound.type === "Gte" ? cmp >= 0 : bound.type === "Lt" ? cmp < 0 : cmp <= 0;
    if (!inside) return false;
  }
  const direction = read.order === "asc" ? 1 : -1;
  if (read.after !== null && direction * compareKeys(key, read.after) <= 0) return false;
  if (read.upTo !== null && direction * compareKeys(key, read.upTo) > 0) return false;
  return true;
}

/** Lexicographic order of two keys of the same index. */
export function compareKeys(a: IndexKey, b: IndexKey): number {
  for (let i = 0; i < Math.min(a.length, b.length); i++) {
    const cmp = compare(a[i], b[i]);
    if (cmp !== 0) return cmp;
  }
  return a.length - b.length;
}

function compare(a: Value | undefined, b: Value | undefined): number {
  return compareValues(a, b);
}

/** A range expression as the query syscall carries it (`convexOrUndefinedToJson` values). */
export function decodeRange(range: readonly { type: string; fieldPath: string; value: JSONValue }[]): RangeBound[] {
  return range.map(({ type, fieldPath, value }) => ({
    type: type as RangeBound["type"],
    fieldPath,
    value: isUndefinedJson(value) ? undefined : jsonToConvex(value),
  }));
}

function isUndefinedJson(value: JSONValue): boolean {
  return value !== null && typeof value === "object" && !Array.isArray(value) && "$undefined" in value;
}

/** The value at a dotted field path (`a.b`), or undefined when a step is missing. */
function valueAt(doc: StoredDocument, path: string): Value | undefined {
  let value: Value | undefined = doc;
  for (const step of path.split(".")) {
    if (typeof value !== "object" || value === null || Array.isArray(value) || value instanceof ArrayBuffer) return undefined;
    value = (value as Record<string, Value | undefined>)[step];
  }
  return value;
}
