/**
 * Database bandwidth as a Convex deployment bills it ("Database I/O"), from convex-backend's
 * source (see README.md, "Usage stats", for the sources line by line):
 *
 * - a document read costs its size (`getDocumentSize`, the whole stored object with `_id` and
 *   `_creationTime`), plus, when read through a user-defined index, the bytes of its index key
 *   (the sort-key encoding of the indexed values, `_creationTime` and `_id`);
 * - a document written costs the new document's size (`getConvexSize`), plus one index entry
 *   per user-defined index of its table: 33 bytes of table number and internal id, plus the
 *   sizes of the indexed values present, `_creationTime` and `_id`; a delete costs nothing.
 */
import type { GenericSchema, SchemaDefinition } from "convex/server";
import { getConvexSize, getDocumentSize, type Value } from "convex/values";

/** A stored document: user fields plus `_id` and `_creationTime`. */
export type StoredDocument = Record<string, Value> & { _id: string; _creationTime: number };

/** User-defined indexes: table -> index name -> indexed field paths. */
export type IndexCatalog = ReadonlyMap<string, ReadonlyMap<string, readonly string[]>>;

/** `TableNumber` (17 bytes) + `InternalId` (16 bytes) of an index entry (crates/common/src/index.rs). */
const INDEX_ENTRY_ID_BYTES = 33;
const TERMINATOR = 1;
const TAG = 1;
const encoder = new TextEncoder();

/** The user-defined indexes of `schema`'s tables (system indexes are not listed by Convex either). */
export function indexCatalog(schema: SchemaDefinition<GenericSchema, boolean>): IndexCatalog {
  const tables = Object.entries(schema.tables).map(([table, definition]) => {
    const indexes = definition[" indexes"]().map(({ indexDescriptor, fields }) => [indexDescriptor, fields] as const);
    return [table, new Map(indexes)] as const;
  });
  return new Map(tables);
}

/** Whether Convex bills an index's key bytes: not `by_id`, `by_creation_time`, `_...` or a system table's. */
export function isUserIndex(table: string, index: string): boolean {
  return !isSystemTable(table) && index !== "by_id" && index !== "by_creation_time" && !index.startsWith("_");
}

/** System tables (`_scheduled_functions`, `_storage`, ...) count toward no usage. */
export function isSystemTable(table: string): boolean {
  return table.startsWith("_");
}

/** Bytes billed for reading `doc`, through an index on `keyFields` (null: by id or a table scan). */
export function readBytes(doc: StoredDocument, keyFields: readonly string[] | null): number {
  return getDocumentSize(doc) + (keyFields === null ? 0 : indexKeyBytes(doc, keyFields));
}

/** Bytes billed for writing `doc` into a table whose user-defined indexes are `indexes`. */
export function writeBytes(doc: StoredDocument, indexes: Iterable<readonly string[]>): number {
  let bytes = getConvexSize(doc);
  for (const fields of indexes) bytes += indexEntryBytes(doc, fields);
  return bytes;
}

/** Length of `doc`'s key in an index on `fields`: `values_to_bytes(fields..., _creationTime, _id)`. */
export function indexKeyBytes(doc: StoredDocument, fields: readonly string[]): number {
  return sum(fields.map((field) => sortKeySize(valueAt(doc, field)))) + sortKeySize(doc._creationTime) + sortKeySize(doc._id);
}

/** `IndexKey::size()` of `doc`'s entry in an index on `fields`; a missing field adds nothing. */
export function indexEntryBytes(doc: StoredDocument, fields: readonly string[]): number {
  const values = [...fields.map((field) => valueAt(doc, field)), doc._creationTime, doc._id];
  return INDEX_ENTRY_ID_BYTES + sum(values.map((value) => getConvexSize(value)));
}

/** Size of `value`'s sort key (crates/value/src/sorting.rs); `undefined` is a missing field. */
export function sortKeySize(value: Value | undefined): number {
  if (value === undefined || value === null || typeof value === "boolean") return TAG;
  if (typeof value === "number") return TAG + 8;
  if (typeof value === "bigint") return TAG + int64Bytes(value);
  if (typeof value === "string") return TAG + escapedSize(encoder.encode(value));
  if (value instanceof ArrayBuffer) return TAG + escapedSize(new Uint8Array(value));
  if (Array.isArray(value)) return TAG + sum(value.map(sortKeySize)) + TERMINATOR;
  const fields = Object.entries(value).filter(([, field]) => field !== undefined);
  return TAG + sum(fields.map(([name, field]) => escapedSize(encoder.encode(name)) + sortKeySize(field))) + TERMINATOR;
}

/** An int64 takes 0, 1, 2, 4 or 8 bytes after its tag, by magnitude (`write_tagged_int`). */
function int64Bytes(n: bigint): number {
  if (n === 0n) return 0;
  for (const bytes of [1, 2, 4]) {
    const half = 1n << BigInt(8 * bytes - 1);
    if (n >= -half && n < half) return bytes;
  }
  return 8;
}

/** Bytes escaped (each 0x00 becomes 0x00 0xFF) and terminated by 0x00. */
function escapedSize(bytes: Uint8Array): number {
  return bytes.length + bytes.filter((byte) => byte === 0).length + TERMINATOR;
}

/** The value at a dotted field path (`a.b`), or undefined when a step is missing or not an object. */
function valueAt(doc: StoredDocument, path: string): Value | undefined {
  let value: Value | undefined = doc;
  for (const step of path.split(".")) {
    if (!isPlainObject(value)) return undefined;
    value = value[step];
  }
  return value;
}

function isPlainObject(value: Value | undefined): value is { [field: string]: Value | undefined } {
  return typeof value === "object" && value !== null && !Array.isArray(value) && !(value instanceof ArrayBuffer);
}

function sum(values: number[]): number {
  return values.reduce((total, value) => total + value, 0);
}
