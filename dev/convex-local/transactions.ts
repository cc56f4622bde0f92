/**
 * Records, for every top-level transaction a stand-in runs (a query, a mutation, or a scheduled
 * mutation), its read set and write set (readsets.ts) and its size: documents and bytes read and
 * written, as Convex's transaction limits count them (`getDocumentSize` of each document read,
 * `getConvexSize` of each document written, a delete 0 bytes).
 *
 * It is a `DatabaseObserver` (syscalls.ts). Nested transactions (`ctx.runMutation` inside a
 * mutation) belong to their top-level one, as in Convex: their reads always count, their writes
 * only if they commit.
 */
import { performance } from "node:perf_hooks";
import { getConvexSize, getDocumentSize, jsonToConvex, type JSONValue } from "convex/values";
import { isSystemTable, type IndexCatalog, type StoredDocument } from "./bandwidth.js";
import {
  decodeRange,
  documentWrite,
  indexFields,
  keyOf,
  type IndexKey,
  type IndexRead,
  type ReadSet,
  type WriteSet,
} from "./readsets.js";
import type { DatabaseObserver, PageRead, QueryJson, ReadSource } from "./syscalls.js";

/** What one top-level transaction did. */
export interface TransactionRecord {
  /** The function path of its first database call ("" when it made none). */
  fn: string;
  readSet: ReadSet;
  writeSet: WriteSet;
  documentsRead: number;
  bytesRead: number;
  documentsWritten: number;
  bytesWritten: number;
  /** From the transaction's start to now (its commit, or where it stopped), in ms. */
  durationMs: number;
}

/** Told about each top-level transaction: before it commits (may throw to refuse it) and once it is over. */
export interface TransactionListener {
  /** The handler returned; throwing here makes convex-test roll the transaction back. */
  committing(record: TransactionRecord): void;
  /** `committed` false: rolled back (an error, a refusal in `committing`, or a query). */
  finished(record: TransactionRecord, committed: boolean): void;
}

interface PendingWrite {
  table: string;
  old: StoredDocument | null;
  now: StoredDocument | null;
}

interface Stream {
  read: Omit<IndexRead, "upTo"> | null;
  limit: number | null;
  returned: number;
  last: IndexKey | null;
  done: boolean;
}

/** One transaction in progress. */
class Open {
  fn = "";
  readonly startedAt = performance.now();
  readonly reads: IndexRead[] = [];
  /** Writes by document id, one map per nesting level, innermost last. */
  readonly writes: Map<string, PendingWrite>[] = [new Map()];
  readonly streams = new Map<number, Stream>();
  documentsRead = 0;
  bytesRead = 0;
}

/** Records the transactions of one call (and of what it schedules: they run in its async context). */
export class TransactionRecorder implements DatabaseObserver {
  #open: Open | null = null;
  #depth = 0;

  constructor(
    private readonly catalog: IndexCatalog,
    private readonly listener: TransactionListener,
  ) {}

  transactionStarted(): void {
    this.#depth += 1;
    if (this.#depth === 1) this.#open = new Open();
    else this.#open?.writes.push(new Map());
  }

  transactionCommitted(): void {
    this.#end(true);
  }

  transactionRolledBack(): void {
    this.#end(false);
  }

  beforeCommit(): void {
    if (this.#depth !== 1 || this.#open === null) return;
    this.listener.committing(this.#record(this.#open));
  }

  documentRead(fn: string, _source: ReadSource, doc: StoredDocument): void {
    const open = this.#at(fn);
    if (open === null || isSystemTable(tableOfId(doc._id))) return;
    open.documentsRead += 1;
    open.bytesRead += getDocumentSize(doc);
  }

  documentWritten(fn: string, table: string, id: string, doc: StoredDocument | null, old: StoredDocument | null): void {
    const open = this.#at(fn);
    if (open === null || isSystemTable(table)) return;
    const level = open.writes[open.writes.length - 1];
    const earlier = findWrite(open, id);
    level.set(id, { table, old: earlier === undefined ? old : earlier.old, now: doc });
  }

  idRead(fn: string, table: string, id: string): void {
    const open = this.#at(fn);
    if (open === null || isSystemTable(table)) return;
    const range = [{ type: "Eq" as const, fieldPath: "_id", value: id }];
    open.reads.push({ table, index: "by_id", fields: ["_id"], range, order: "asc", after: null, upTo: null });
  }

  queryStarted(queryId: number, query: QueryJson): void {
    const open = this.#open;
    if (open === null) return;
    const limit = query.operators.find((op): op is { limit: number } => "limit" in op)?.limit ?? null;
    open.streams.set(queryId, { read: this.#readOf(query), limit, returned: 0, last: null, done: false });
  }

  queryNext(queryId: number, doc: StoredDocument | null): void {
    const stream = this.#open?.streams.get(queryId);
    if (stream === undefined || stream.read === null) return;
    if (doc === null) stream.done = true;
    else {
      stream.returned += 1;
      stream.last = keyOf(doc, stream.read.fields);
    }
  }

  queryEnded(queryId: number): void {
    const open = this.#open;
    const stream = open?.streams.get(queryId);
    if (open === null || open === undefined || stream === undefined) return;
    open.streams.delete(queryId);
    const read = streamRead(stream);
    if (read !== null) open.reads.push(read);
  }

  pageRead(fn: string, page: PageRead): void {
    const open = this.#at(fn);
    const read = this.#readOf(page.query);
    if (open === null || read === null) return;
    const after = page.cursor === null ? null : decodeCursor(page.cursor);
    const end = page.isDone ? page.endCursor : page.continueCursor;
    const upTo = end === null || end === "_end_cursor" ? null : decodeCursor(end);
    open.reads.push({ ...read, after, upTo });
  }

  #at(fn: string): Open | null {
    if (this.#open !== null && this.#open.fn === "") this.#open.fn = fn;
    return this.#open;
  }

  #end(committed: boolean): void {
    const open = this.#open;
    this.#depth -= 1;
    if (open === null) return;
    if (this.#depth > 0) {
      const child = open.writes.pop()!;
      if (committed) for (const [id, write] of child) open.writes[open.writes.length - 1].set(id, write);
      return;
    }
    this.#open = null;
    this.listener.finished(this.#record(open), committed);
  }

  /** The transaction as it stands: open streams count as read up to where they got. */
  #record(open: Open): TransactionRecord {
    const reads = [...open.reads];
    for (const stream of open.streams.values()) {
      const read = streamRead(stream);
      if (read !== null) reads.push(read);
    }
    const writes = new Map<string, PendingWrite>();
    for (const level of open.writes) for (const [id, write] of level) writes.set(id, write);
    let bytesWritten = 0;
    for (const { now } of writes.values()) bytesWritten += now === null ? 0 : getConvexSize(now);
    return {
      fn: open.fn,
      readSet: { reads },
      writeSet: { writes: [...writes].map(([id, w]) => documentWrite(this.catalog, w.table, id, w.old, w.now)) },
      documentsRead: open.documentsRead,
      bytesRead: open.bytesRead,
      documentsWritten: writes.size,
      bytesWritten,
      durationMs: performance.now() - open.startedAt,
    };
  }

  /** The index read a query's source describes (a table scan reads `by_creation_time`). */
  #readOf(query: QueryJson): Omit<IndexRead, "upTo"> | null {
    const { source } = query;
    const order = source.order === "desc" ? "desc" : "asc";
    if (source.type === "FullTableScan" && source.tableName !== undefined) {
      if (isSystemTable(source.tableName)) return null;
      return { table: source.tableName, index: "by_creation_time", fields: ["_creationTime", "_id"], range: [], order, after: null };
    }
    if (source.type === "IndexRange" && source.indexName !== undefined) {
      const dot = source.indexName.indexOf(".");
      const table = source.indexName.slice(0, dot);
      const index = source.indexName.slice(dot + 1);
      const fields = indexFields(this.catalog, table, index);
      if (fields === null || isSystemTable(table)) return null;
      return { table, index, fields, range: decodeRange(source.range ?? []), order, after: null };
    }
    // A text or vector search: counted as reading the whole table (its own read set is not modelled).
    const table = (source.indexName ?? source.tableName ?? "").split(".")[0];
    if (table === "" || isSystemTable(table)) return null;
    return { table, index: "by_creation_time", fields: ["_creationTime", "_id"], range: [], order: "asc", after: null };
  }
}

/**
 * What a stream read: nothing before its first document; the whole range once exhausted (it said
 * done before reaching its `limit`); otherwise up to the last key it returned.
 */
function streamRead(stream: Stream): IndexRead | null {
  if (stream.read === null) return null;
  const exhausted = stream.done && (stream.limit === null || stream.returned < stream.limit);
  if (exhausted) return { ...stream.read, upTo: null };
  if (stream.last === null) return null;
  return { ...stream.read, upTo: stream.last };
}

function findWrite(open: Open, id: string): PendingWrite | undefined {
  for (let i = open.writes.length - 1; i >= 0; i--) {
    const write = open.writes[i].get(id);
    if (write !== undefined) return write;
  }
  return undefined;
}

/** convex-test 0.0.60's cursor: a JSON array, per key field, of null (missing) or JSON of its Convex JSON. */
function decodeCursor(cursor: string): IndexKey {
  const parts = JSON.parse(cursor) as (string | null)[];
  return parts.map((part) => (part === null ? undefined : jsonToConvex(JSON.parse(part) as JSONValue)));
}

/** convex-test's ids end with their table name (`10001notes`). */
function tableOfId(id: string): string {
  return id.replace(/^\d+/, "");
}
