/**
 * Index reads that cost what Convex's cost: proportional to what they find, not to the database.
 *
 * convex-test 0.0.60 answers every query, index range or not, by walking every document of the
 * whole database (`DatabaseFake._iterateDocs`: `Object.keys(this._documents).filter(isInTable)`,
 * each id's table parsed by a regular expression), then filtering and sorting. One `.unique()`
 * by index therefore costs O(all documents): with 200 instances failing 16 panic checks a sync
 * took 38.8 ms of this one Node thread, the stand-in's serial queue grew past the sidecar's 2 s
 * timeout and the 30 s timestamp window, and nearly every sync failed (docs/benchmarks.md,
 * "Fleet"). Convex reads an index
 * range as a range of its index (crates/database/src/index_registry.rs, `IndexReader`: a
 * B-tree range over the index key), at a cost that grows with the documents in the range.
 *
 * This keeps, per DatabaseFake, the ids of each table and, for every schema index, the ids by
 * the string value of the index's first field. A query whose index range starts with an equality
 * on a string (`q.eq("instance", name)`: nearly every query of convex/) hands convex-test only
 * that bucket (plus the transaction's own pending writes of the table); any other query hands it
 * the table's ids instead of the whole database's. convex-test still applies the range, the
 * filters, the order and the limit itself, so the answers are unchanged: the buckets only narrow
 * the candidates. The read-set and bandwidth accounting (syscalls.ts) sees the same documents.
 */
import { AsyncLocalStorage } from "node:async_hooks";
import type { GenericSchema, SchemaDefinition } from "convex/server";

type Doc = Record<string, unknown> & { _id: string };
type Writes = Record<string, Doc | null>;
interface RangeExpr {
  type: string;
  fieldPath: string;
  value: unknown;
}
interface QuerySource {
  type: string;
  tableName?: string;
  indexName?: string;
  range?: RangeExpr[];
}
interface FakeDb {
  _documents: Record<string, Doc>;
  _writes: Writes[];
  _iterateDocs(table: string, callback: (doc: Doc) => void): void;
  _resolveQuerySource(query: { source: QuerySource }): unknown;
  commit(commitTs?: unknown): void;
  get(table: string, id: string): Doc | null;
}

/** table -> its ids; table -> index first field -> value -> ids. */
interface Catalog {
  tables: Map<string, Set<string>>;
  buckets: Map<string, Map<string, Map<string, Set<string>>>>;
}

const INSTALLED = Symbol.for("convex-local.indexes");

/** `10000;table` style ids of convex-test: the table is what follows the leading digits. */
function tableOf(id: string): string {
  let i = 0;
  while (i < id.length && id.charCodeAt(i) >= 48 && id.charCodeAt(i) <= 57) i++;
  return id.slice(i);
}

/** The first field of each schema index, by table. */
function firstFields(schema: SchemaDefinition<GenericSchema, boolean>): Map<string, string[]> {
  const fields = new Map<string, string[]>();
  for (const [table, definition] of Object.entries(schema.tables)) {
    const exported = (definition as unknown as { export(): { indexes: { fields: string[] }[] } }).export();
    fields.set(table, [...new Set(exported.indexes.map((index) => index.fields[0]))]);
  }
  return fields;
}

/**
 * Makes `t`'s database (convex-test's DatabaseFake, reached through the store convex-test runs
 * its calls in) answer index ranges from the catalog. Call once, right after `convexTest()`.
 */
export function installIndexes(
  t: { run(fn: (ctx: unknown) => Promise<unknown>): Promise<unknown> },
  schema: SchemaDefinition<GenericSchema, boolean>,
): void {
  const db = findDatabase(t);
  const proto = Object.getPrototypeOf(db) as FakeDb & { [INSTALLED]?: WeakMap<FakeDb, Catalog> };
  const indexed = firstFields(schema);
  if (proto[INSTALLED] === undefined) patch(proto);
  const catalogs = proto[INSTALLED] as WeakMap<FakeDb, Catalog>;
  catalogs.set(db, build(db, indexed));
  fieldsOf.set(db, indexed);
}

const fieldsOf = new WeakMap<FakeDb, Map<string, string[]>>();

/** The root component's DatabaseFake: convex-test passes its global store to AsyncLocalStorage.run. */
function findDatabase(t: { run(fn: (ctx: unknown) => Promise<unknown>): Promise<unknown> }): FakeDb {
  const run = AsyncLocalStorage.prototype.run;
  let found: FakeDb | undefined;
  AsyncLocalStorage.prototype.run = function (this: AsyncLocalStorage<unknown>, store: unknown, ...rest: unknown[]) {
    const db = (store as { components?: Record<string, { db?: FakeDb }> } | undefined)?.components?.[""]?.db;
    if (found === undefined && db !== undefined && typeof db._iterateDocs === "function") found = db;
    return (run as (...args: unknown[]) => unknown).call(this, store, ...rest);
  } as typeof run;
  try {
    t.run(async () => null).catch(() => undefined);
  } finally {
    AsyncLocalStorage.prototype.run = run;
  }
  if (found === undefined) throw new Error("convex-local: convex-test's database was not found (convex-test changed?)");
  return found;
}

function build(db: FakeDb, indexed: Map<string, string[]>): Catalog {
  const catalog: Catalog = { tables: new Map(), buckets: new Map() };
  for (const [id, doc] of Object.entries(db._documents)) add(catalog, indexed, id, doc);
  return catalog;
}

function bucketsOf(catalog: Catalog, table: string): Map<string, Map<string, Set<string>>> {
  let buckets = catalog.buckets.get(table);
  if (buckets === undefined) catalog.buckets.set(table, (buckets = new Map()));
  return buckets;
}

function add(catalog: Catalog, indexed: Map<string, string[]>, id: string, doc: Doc): void {
  const table = tableOf(id);
  let ids = catalog.tables.get(table);
  if (ids === undefined) catalog.tables.set(table, (ids = new Set()));
  ids.add(id);
  const buckets = bucketsOf(catalog, table);
  for (const field of indexed.get(table) ?? []) {
    const value = doc[field];
    if (typeof value !== "string") continue;
    let byValue = buckets.get(field);
    if (byValue === undefined) buckets.set(field, (byValue = new Map()));
    let bucket = byValue.get(value);
    if (bucket === undefined) byValue.set(value, (bucket = new Set()));
    bucket.add(id);
  }
}

function remove(catalog: Catalog, indexed: Map<string, string[]>, id: string, doc: Doc): void {
  const table = tableOf(id);
  catalog.tables.get(table)?.delete(id);
  const buckets = catalog.buckets.get(table);
  for (const field of indexed.get(table) ?? []) {
    const value = doc[field];
    if (typeof value !== "string") continue;
    const bucket = buckets?.get(field)?.get(value);
    bucket?.delete(id);
    if (bucket?.size === 0) buckets?.get(field)?.delete(value);
  }
}

function patch(proto: FakeDb & { [INSTALLED]?: WeakMap<FakeDb, Catalog> }): void {
  const catalogs = new WeakMap<FakeDb, Catalog>();
  proto[INSTALLED] = catalogs;
  const { commit, _iterateDocs, _resolveQuerySource } = proto;

  // A top-level commit applies its writes to _documents: the catalog follows, by old and new value.
  proto.commit = function (this: FakeDb, commitTs?: unknown) {
    const catalog = catalogs.get(this);
    const indexed = fieldsOf.get(this);
    const top = this._writes.length === 1 ? this._writes[0] : undefined;
    const before = new Map<string, Doc | undefined>();
    if (catalog !== undefined && top !== undefined) for (const id of Object.keys(top)) before.set(id, this._documents[id]);
    commit.call(this, commitTs);
    if (catalog === undefined || indexed === undefined || top === undefined) return;
    for (const [id, old] of before) {
      if (old !== undefined) remove(catalog, indexed, id, old);
      const now = this._documents[id];
      if (now !== undefined) add(catalog, indexed, id, now);
    }
  };

  // The table's ids (and the transaction's pending writes of it) instead of the whole database.
  proto._iterateDocs = function (this: FakeDb, table: string, callback: (doc: Doc) => void) {
    const catalog = catalogs.get(this);
    if (catalog === undefined) return _iterateDocs.call(this, table, callback);
    visit(this, table, catalog.tables.get(table), callback);
  };

  // An index range that starts with a string equality: that bucket only.
  proto._resolveQuerySource = function (this: FakeDb, query: { source: QuerySource }) {
    const catalog = catalogs.get(this);
    const source = query.source;
    const first = source.type === "IndexRange" ? source.range?.[0] : undefined;
    if (catalog === undefined || first === undefined || first.type !== "Eq" || typeof first.value !== "string") {
      return _resolveQuerySource.call(this, query);
    }
    const [table, index] = (source.indexName ?? "").split(".");
    if (index === "by_id" || index === "by_creation_time") return _resolveQuerySource.call(this, query);
    const bucket = catalog.buckets.get(table)?.get(first.fieldPath)?.get(first.value) ?? new Set<string>();
    const narrowed = Object.create(this) as FakeDb;
    narrowed._iterateDocs = (name: string, callback: (doc: Doc) => void) => visit(this, name, bucket, callback);
    return _resolveQuerySource.call(narrowed, query);
  };
}

/** Calls back with each live document of `ids` and of the pending writes of `table`. */
function visit(db: FakeDb, table: string, ids: Set<string> | undefined, callback: (doc: Doc) => void): void {
  const seen = new Set<string>(ids);
  for (const level of db._writes) for (const id of Object.keys(level)) if (tableOf(id) === table) seen.add(id);
  for (const id of seen) {
    const doc = db.get(table, id);
    if (doc !== null) callback(doc);
  }
}
