/**
 * Usage stats of a stand-in, by function path: calls, errors and database bandwidth counted as a
 * Convex deployment bills them (bandwidth.ts). Reads count when they happen, even in a call that
 * fails; writes count when their transaction commits, once per document (the final version), as
 * Convex's committer does. Each call also yields its read set, and each commit's write set goes
 * to the commit listeners (readsets.ts, transactions.ts): the sync protocol re-runs subscribed
 * queries by them (sync_ws.ts).
 */
import type { GenericSchema, SchemaDefinition } from "convex/server";
import {
  indexCatalog,
  isSystemTable,
  isUserIndex,
  readBytes,
  writeBytes,
  type IndexCatalog,
  type StoredDocument,
} from "./bandwidth.js";
import type { ReadSet, WriteSet } from "./readsets.js";
import { combineObservers, observeDatabase, type DatabaseObserver, type ReadSource } from "./syscalls.js";
import { TransactionRecorder } from "./transactions.js";

export interface FunctionStats {
  calls: number;
  errors: number;
  documentsRead: number;
  bytesRead: number;
  documentsWritten: number;
  bytesWritten: number;
}

/** `GET /_dev/stats`: `{"functions": {"health:sync": {...}, ...}}`. */
export interface UsageReport {
  functions: Record<string, FunctionStats>;
}

/**
 * A function call's outcome; `started` tells whether its body ran (a transaction or a syscall
 * began); `readSet` is what its own transaction read (nothing if none began).
 */
export type Measured<T> = ({ ok: true; value: T } | { ok: false; error: unknown; started: boolean }) & { readSet: ReadSet };

interface PendingWrite {
  fn: string;
  table: string;
  doc: StoredDocument | null;
}

/** Told of every top-level commit (a call's or a scheduled function's) that wrote user documents. */
export type CommitListener = (writeSet: WriteSet) => void;

const NO_USAGE: FunctionStats = {
  calls: 0,
  errors: 0,
  documentsRead: 0,
  bytesRead: 0,
  documentsWritten: 0,
  bytesWritten: 0,
};

/** Counts one stand-in's usage; its functions run one transaction at a time (convex-test's lock). */
export class UsageMeter {
  readonly #indexes: IndexCatalog;
  readonly #stats = new Map<string, FunctionStats>();
  /** Pending writes of the open transaction and of its nested ones, innermost last, by document id. */
  readonly #transactions: Map<string, PendingWrite>[] = [];
  readonly #commitListeners = new Set<CommitListener>();

  constructor(schema: SchemaDefinition<GenericSchema, boolean>) {
    this.#indexes = indexCatalog(schema);
  }

  /** Runs one function call, counted under `fn` (its database usage counts under the path that does it). */
  async measure<T>(fn: string, run: () => Promise<T>): Promise<Measured<T>> {
    const call = new CallObserver(this);
    let readSet: ReadSet | null = null;
    const recorder = new TransactionRecorder(this.#indexes, {
      committing: () => undefined,
      finished: ({ readSet: reads, writeSet }, committed) => {
        readSet ??= reads; // the call's own transaction ends first; then those it scheduled
        if (committed && writeSet.writes.length > 0) for (const listener of this.#commitListeners) listener(writeSet);
      },
    });
    this.#add(fn, { calls: 1 });
    try {
      const value = await observeDatabase(combineObservers(call, recorder), run);
      return { ok: true, value, readSet: readSet ?? { reads: [] } };
    } catch (error) {
      this.#add(fn, { errors: 1 });
      return { ok: false, error, started: call.started, readSet: readSet ?? { reads: [] } };
    }
  }

  /** Calls `listener` after each commit that wrote user documents (the sync protocol re-runs queries then). */
  onCommit(listener: CommitListener): () => void {
    this.#commitListeners.add(listener);
    return () => this.#commitListeners.delete(listener);
  }

  report(): UsageReport {
    const functions = [...this.#stats].sort(([a], [b]) => a.localeCompare(b));
    return { functions: Object.fromEntries(functions.map(([fn, stats]) => [fn, { ...stats }])) };
  }

  reset(): void {
    this.#stats.clear();
  }

  transactionStarted(): void {
    this.#transactions.push(new Map());
  }

  transactionCommitted(): void {
    const writes = this.#transactions.pop() ?? new Map<string, PendingWrite>();
    const parent = this.#transactions.at(-1);
    for (const [id, write] of writes) {
      if (parent !== undefined) parent.set(id, write);
      else this.#commit(write);
    }
  }

  transactionRolledBack(): void {
    this.#transactions.pop();
  }

  documentRead(fn: string, { table, index }: ReadSource, doc: StoredDocument): void {
    if (isSystemTable(table)) return;
    const keyFields = index !== null && isUserIndex(table, index) ? this.#indexes.get(table)?.get(index) : undefined;
    this.#add(fn, { documentsRead: 1, bytesRead: readBytes(doc, keyFields ?? null) });
  }

  documentWritten(fn: string, table: string, id: string, doc: StoredDocument | null): void {
    if (isSystemTable(table)) return;
    const transaction = this.#transactions.at(-1);
    if (transaction === undefined) this.#commit({ fn, table, doc });
    else transaction.set(id, { fn, table, doc });
  }

  #commit({ fn, table, doc }: PendingWrite): void {
    const bytes = doc === null ? 0 : writeBytes(doc, this.#indexes.get(table)?.values() ?? []);
    this.#add(fn, { documentsWritten: 1, bytesWritten: bytes });
  }

  #add(fn: string, usage: Partial<FunctionStats>): void {
    const stats = this.#stats.get(fn) ?? { ...NO_USAGE };
    for (const [key, value] of Object.entries(usage) as [keyof FunctionStats, number][]) stats[key] += value;
    this.#stats.set(fn, stats);
  }
}

/** One call's view: forwards to the meter and notes whether the function's body started. */
class CallObserver implements DatabaseObserver {
  started = false;

  constructor(private readonly meter: UsageMeter) {}

  transactionStarted(): void {
    this.started = true;
    this.meter.transactionStarted();
  }

  transactionCommitted(): void {
    this.meter.transactionCommitted();
  }

  transactionRolledBack(): void {
    this.meter.transactionRolledBack();
  }

  documentRead(fn: string, source: ReadSource, doc: StoredDocument): void {
    this.started = true;
    this.meter.documentRead(fn, source, doc);
  }

  documentWritten(fn: string, table: string, id: string, doc: StoredDocument | null): void {
    this.started = true;
    this.meter.documentWritten(fn, table, id, doc);
  }
}
