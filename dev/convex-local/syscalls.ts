/**
 * Watches the database syscalls of convex-test's functions, so that convex-local can bill them
 * as a Convex deployment does (bandwidth.ts) without changing what they do.
 *
 * Convex's JS runtime (`convex/server`) reaches the database only through the global
 * `Convex.syscall` / `Convex.asyncSyscall`, which convex-test installs. They are wrapped here,
 * once per process; the wrapper reports to the observer of the current async context (see
 * `observeDatabase`), so several stand-ins in one process keep separate accounts.
 *
 * Two hooks reach into convex-test 0.0.60's `TransactionMetricsTracker` (its transaction-limit
 * counter, driven in lockstep with its transactions): its start/commit/rollback tell when writes
 * become real, and `peek` reads a document without counting toward the transaction limits (a
 * write's old and new document are read that way, so that the limits see only what the function
 * itself read, as in Convex).
 */
import { AsyncLocalStorage } from "node:async_hooks";
import { TransactionMetricsTracker } from "convex-test/dist/transactionMetrics.js";
import { jsonToConvex, type JSONValue } from "convex/values";
import type { StoredDocument } from "./bandwidth.js";

/** Where a document was read from: `index` null means by id, a table scan or a search. */
export interface ReadSource {
  table: string;
  index: string | null;
}

/** A query as the `1.0/queryStream` and `1.0/queryPage` syscalls carry it. */
export interface QueryJson {
  source: {
    type: string;
    indexName?: string;
    tableName?: string;
    order?: "asc" | "desc" | null;
    range?: { type: string; fieldPath: string; value: JSONValue }[];
  };
  operators: ({ filter: JSONValue } | { limit: number })[];
}

/** A `.paginate()` call: its query, cursors and answer. */
export interface PageRead {
  query: QueryJson;
  cursor: string | null;
  endCursor: string | null;
  isDone: boolean;
  continueCursor: string;
}

/**
 * What a stand-in learns about its functions' database work. `fn` is the function path
 * ("health:sync"). The optional members are the detail read sets need (readsets.ts).
 */
export interface DatabaseObserver {
  transactionStarted(): void;
  transactionCommitted(): void;
  transactionRolledBack(): void;
  documentRead(fn: string, source: ReadSource, doc: StoredDocument): void;
  /** `doc` is the document as stored after the write, null for a delete; `old` the one before it. */
  documentWritten(fn: string, table: string, id: string, doc: StoredDocument | null, old: StoredDocument | null): void;
  /** `db.get(id)`, whatever it found. */
  idRead?(fn: string, table: string, id: string): void;
  queryStarted?(queryId: number, query: QueryJson): void;
  /** A document a query stream yielded, or null when it said it was done. */
  queryNext?(queryId: number, doc: StoredDocument | null): void;
  queryEnded?(queryId: number): void;
  pageRead?(fn: string, page: PageRead): void;
  /** The function's handler returned and its transaction is about to commit (top level or nested); may throw. */
  beforeCommit?(): void;
}

interface ConvexSyscalls {
  syscall(op: string, args: string): string;
  asyncSyscall(op: string, args: string): Promise<string>;
  jsSyscall(op: string, args: unknown): unknown;
}

interface Call {
  syscalls: ConvexSyscalls;
  observer: DatabaseObserver;
  args: Record<string, JSONValue>;
  run: () => Promise<string>;
}

const INSTALLED = Symbol.for("convex-local.syscalls");
const observers = new AsyncLocalStorage<DatabaseObserver>();
/** Query streams by observer: queryId -> where its documents come from. */
const streams = new WeakMap<DatabaseObserver, Map<number, ReadSource>>();
/** > 0 while `peek` runs: convex-test's limit counter then ignores the read. */
let peeking = 0;

/** Runs `fn` with `observer` told of every database syscall made in its async context. */
export function observeDatabase<T>(observer: DatabaseObserver, fn: () => T): T {
  return observers.run(observer, fn);
}

/** Tells the current observer that a mutation handler returned (see `withCommitHook`); may throw. */
export function beforeCommit(): void {
  observers.getStore()?.beforeCommit?.();
}

/**
 * `module` with each mutation's handler followed by `beforeCommit()`, still inside its
 * transaction: convex-test commits only after the handler returns, so a throw there rolls it back.
 */
export function withCommitHooks(module: Record<string, unknown>): Record<string, unknown> {
  const hooked = (fn: unknown): unknown => {
    const registered = fn as { isMutation?: boolean; _handler?: (ctx: unknown, args: unknown) => Promise<unknown> };
    if (typeof fn !== "function" || !registered.isMutation || typeof registered._handler !== "function") return fn;
    const handler = registered._handler;
    const copy = Object.assign((...args: unknown[]) => (fn as (...a: unknown[]) => unknown)(...args), fn) as unknown as {
      _handler: unknown;
    };
    copy._handler = async (ctx: unknown, args: unknown) => {
      const value = await handler(ctx, args);
      beforeCommit();
      return value;
    };
    return copy;
  };
  return Object.fromEntries(Object.entries(module).map(([name, fn]) => [name, hooked(fn)]));
}

/** One observer that forwards every event to each of `parts`, in order. */
export function combineObservers(...parts: DatabaseObserver[]): DatabaseObserver {
  return {
    transactionStarted: () => parts.forEach((p) => p.transactionStarted()),
    transactionCommitted: () => parts.forEach((p) => p.transactionCommitted()),
    transactionRolledBack: () => parts.forEach((p) => p.transactionRolledBack()),
    documentRead: (fn, source, doc) => parts.forEach((p) => p.documentRead(fn, source, doc)),
    documentWritten: (fn, table, id, doc, old) => parts.forEach((p) => p.documentWritten(fn, table, id, doc, old)),
    idRead: (fn, table, id) => parts.forEach((p) => p.idRead?.(fn, table, id)),
    queryStarted: (queryId, query) => parts.forEach((p) => p.queryStarted?.(queryId, query)),
    queryNext: (queryId, doc) => parts.forEach((p) => p.queryNext?.(queryId, doc)),
    queryEnded: (queryId) => parts.forEach((p) => p.queryEnded?.(queryId)),
    pageRead: (fn, page) => parts.forEach((p) => p.pageRead?.(fn, page)),
    beforeCommit: () => parts.forEach((p) => p.beforeCommit?.()),
  };
}

/** Runs `fn` with `observer` told of its database syscalls too, besides the current observer. */
export function observeAlso<T>(observer: DatabaseObserver, fn: () => T): T {
  const current = observers.getStore();
  return observers.run(current === undefined ? observer : combineObservers(current, observer), fn);
}

/** Wraps convex-test's `Convex` global (call after the first `convexTest()`); idempotent. */
export function installDatabaseObserver(): void {
  const global = globalThis as { Convex?: ConvexSyscalls & { [INSTALLED]?: true } };
  const inner = global.Convex;
  if (inner === undefined) throw new Error("convex-test has not installed its Convex global yet");
  if (inner[INSTALLED]) return;
  global.Convex = {
    [INSTALLED]: true,
    syscall: (op, args) => onSyscall(inner, op, args),
    asyncSyscall: (op, args) => onAsyncSyscall(inner, op, args),
    jsSyscall: (op, args) => inner.jsSyscall(op, args),
  };
  hookTracker();
}

function hookTracker(): void {
  const tracker = TransactionMetricsTracker.prototype;
  const { trackRead, trackIndexRange, startTransaction, commit, rollback } = tracker;
  tracker.trackRead = function (this: TransactionMetricsTracker, bytes: number) {
    if (peeking === 0) trackRead.call(this, bytes);
  };
  tracker.trackIndexRange = function (this: TransactionMetricsTracker) {
    if (peeking === 0) trackIndexRange.call(this);
  };
  tracker.startTransaction = function (this: TransactionMetricsTracker, limits) {
    startTransaction.call(this, limits);
    observers.getStore()?.transactionStarted();
  };
  tracker.commit = function (this: TransactionMetricsTracker) {
    commit.call(this);
    observers.getStore()?.transactionCommitted();
  };
  tracker.rollback = function (this: TransactionMetricsTracker) {
    rollback.call(this);
    observers.getStore()?.transactionRolledBack();
  };
}

/** The synchronous syscalls: a query stream starts (`1.0/queryStream`) and ends (`1.0/queryCleanup`). */
function onSyscall(syscalls: ConvexSyscalls, op: string, args: string): string {
  const result = syscalls.syscall(op, args);
  const observer = observers.getStore();
  if (observer === undefined) return result;
  if (op === "1.0/queryStream") {
    const { queryId } = JSON.parse(result) as { queryId: number };
    const { query } = JSON.parse(args) as { query: QueryJson };
    streamsOf(observer).set(queryId, sourceOf(query.source));
    observer.queryStarted?.(queryId, query);
  }
  if (op === "1.0/queryCleanup") {
    const { queryId } = JSON.parse(args) as { queryId: number };
    streamsOf(observer).delete(queryId);
    observer.queryEnded?.(queryId);
  }
  return result;
}

async function onAsyncSyscall(syscalls: ConvexSyscalls, op: string, args: string): Promise<string> {
  const observer = observers.getStore();
  const handler = Object.hasOwn(DATABASE_OPS, op) ? DATABASE_OPS[op] : undefined;
  const run = () => syscalls.asyncSyscall(op, args);
  if (observer === undefined || handler === undefined) return await run();
  return await handler({ syscalls, observer, args: JSON.parse(args) as Record<string, JSONValue>, run });
}

/** The database syscalls of convex-test 0.0.60 (`asyncSyscallImpl`), each observed after it succeeds. */
const DATABASE_OPS: Record<string, (call: Call) => Promise<string>> = {
  "1.0/get": async ({ syscalls, observer, args, run }) => {
    const result = await run();
    const doc = decode(result);
    const fn = await functionPath(syscalls);
    const source = byId(args);
    observer.idRead?.(fn, source.table, String(args.id));
    if (doc !== null) observer.documentRead(fn, source, doc);
    return result;
  },
  "1.0/queryStreamNext": async ({ syscalls, observer, args, run }) => {
    const result = await run();
    const { value } = JSON.parse(result) as { value: JSONValue };
    const source = streamsOf(observer).get(Number(args.queryId));
    const doc = value === null ? null : (jsonToConvex(value) as StoredDocument);
    if (doc !== null && source !== undefined) observer.documentRead(await functionPath(syscalls), source, doc);
    if (source !== undefined) observer.queryNext?.(Number(args.queryId), doc);
    return result;
  },
  "1.0/queryPage": async ({ syscalls, observer, args, run }) => {
    const result = await run();
    const { page, isDone, continueCursor } = JSON.parse(result) as { page: JSONValue[]; isDone: boolean; continueCursor: string };
    const query = args.query as unknown as QueryJson;
    const source = sourceOf(query.source);
    const fn = await functionPath(syscalls);
    for (const doc of page) observer.documentRead(fn, source, jsonToConvex(doc) as StoredDocument);
    const cursor = (args.cursor ?? null) as string | null;
    const endCursor = (args.endCursor ?? null) as string | null;
    observer.pageRead?.(fn, { query, cursor, endCursor, isDone, continueCursor });
    return result;
  },
  "1.0/insert": async ({ syscalls, observer, args, run }) => {
    const result = await run();
    const { _id } = JSON.parse(result) as { _id: string };
    const table = String(args.table);
    observer.documentWritten(await functionPath(syscalls), table, _id, await peek(syscalls, table, _id), null);
    return result;
  },
  "1.0/shallowMerge": (call) => update(call, true),
  "1.0/replace": (call) => update(call, true),
  "1.0/remove": (call) => update(call, false),
};

/** patch, replace and delete read the old document first (Convex's `patch_inner` & co. do). */
async function update({ syscalls, observer, args, run }: Call, keeps: boolean): Promise<string> {
  const { table, index } = byId(args);
  const id = String(args.id);
  const fn = await functionPath(syscalls);
  const old = await peek(syscalls, table, id);
  observer.idRead?.(fn, table, id);
  if (old !== null) observer.documentRead(fn, { table, index }, old);
  const result = await run();
  observer.documentWritten(fn, table, id, keeps ? await peek(syscalls, table, id) : null, old);
  return result;
}

/** Reads a document (with the transaction's pending writes) without counting toward convex-test's limits. */
async function peek(syscalls: ConvexSyscalls, table: string, id: string): Promise<StoredDocument | null> {
  peeking += 1;
  let pending: Promise<string>;
  try {
    // convex-test counts the read synchronously, inside this call.
    pending = syscalls.asyncSyscall("1.0/get", JSON.stringify({ id, table }));
  } finally {
    peeking -= 1;
  }
  return decode(await pending);
}

/** The path ("module:function") of the function making the current syscall. */
async function functionPath(syscalls: ConvexSyscalls): Promise<string> {
  const { name } = JSON.parse(await syscalls.asyncSyscall("1.0/getFunctionMetadata", "{}")) as { name: string };
  return name;
}

function decode(result: string): StoredDocument | null {
  return jsonToConvex(JSON.parse(result) as JSONValue) as StoredDocument | null;
}

function streamsOf(observer: DatabaseObserver): Map<number, ReadSource> {
  let map = streams.get(observer);
  if (map === undefined) streams.set(observer, (map = new Map()));
  return map;
}

function sourceOf(source: QueryJson["source"]): ReadSource {
  if (source.type === "IndexRange" && source.indexName !== undefined) {
    const dot = source.indexName.indexOf(".");
    return { table: source.indexName.slice(0, dot), index: source.indexName.slice(dot + 1) };
  }
  return { table: source.tableName ?? source.indexName?.split(".")[0] ?? "", index: null };
}

/** A read by id: the table named in the call, or else the one convex-test's ids end with. */
function byId(args: Record<string, JSONValue>): ReadSource {
  const table = typeof args.table === "string" ? args.table : String(args.id).replace(/^\d+/, "");
  return { table, index: null };
}
