/**
 * Optimistic concurrency as Convex runs it, modelled on a backend (convex-test) that runs one
 * transaction at a time.
 *
 * Convex (get-convex/convex-backend): a mutation reads at its begin timestamp; at commit, the
 * committer checks its read set against every write committed since (crates/database/src/
 * committer.rs, write_log.rs, reads.rs `writes_overlap_*`); an overlap is an OCC error. The
 * function runner retries it (crates/application/src/application_function_runner/mod.rs,
 * `_retry_mutation`) while `backoff.failures() < UDF_EXECUTOR_OCC_MAX_RETRIES` (4, so 5 attempts),
 * sleeping `Backoff::fail`: min(initial x 2^failures, max) x a uniform jitter in [0, 1), with
 * initial 100 ms and max 2 s (crates/common/src/knobs.rs `UDF_EXECUTOR_OCC_INITIAL_BACKOFF`,
 * `UDF_EXECUTOR_OCC_MAX_BACKOFF`; crates/convex/sync_types/src/backoff.rs). Past that budget the
 * error reaches the caller: `ErrorMetadata::user_occ` (crates/errors/src/lib.rs), HTTP 503
 * `{"code":"OptimisticConcurrencyControlFailure","message":"Documents read from or written to the
 * table \"t\" changed while this mutation was being run and on every subsequent retry. Another
 * call to this mutation changed the document with ID \"...\". See https://docs.convex.dev/error#1"}`
 * (the middle sentence from `occ_write_source_string`, database.rs). Scheduled mutations are
 * retried until they commit (scheduled_jobs/mod.rs, backoff 100 ms to 60 s).
 *
 * The model. Every attempt of a mutation takes its snapshot when it is submitted (the request's
 * arrival, or its resubmission after a backoff) and commits, in Convex's time, one execution time
 * later (the time its handler took here, x `timeScale`). The stand-in executes attempts one at a
 * time in submission order, so it knows every commit that came before. An attempt conflicts when
 * a transaction that committed before it (in execution order) was still running, in Convex's time,
 * when it took its snapshot (its virtual commit is later than the snapshot) and wrote into its
 * read set (readsets.ts `findConflict`). A conflicting attempt is rolled back (the check throws
 * inside its transaction, so convex-test discards its writes) and retried as Convex retries it;
 * past the budget it fails as Convex fails it. Queueing in the stand-in is not counted: windows
 * are Convex's execution times, not this process's backlog.
 *
 * Not modelled: when two overlapping transactions conflict, Convex fails the one that commits
 * last in its time; here it is always the one executed second (so a long transaction is never
 * the loser against short ones submitted during it: they are). Transactions not started by an
 * HTTP mutation call (scheduled mutations, an action's runMutation) commit at once; their
 * conflicts are counted (`backgroundConflicts`) since Convex would retry them until they commit.
 */
import { performance } from "node:perf_hooks";
import type { IndexCatalog } from "./bandwidth.js";
import { findConflict, type Conflict, type WriteSet } from "./readsets.js";
import { TransactionRecorder, type TransactionRecord } from "./transactions.js";

export interface OccOptions {
  /** false: every transaction commits (deterministic tests). Default true. */
  enabled?: boolean;
  /** Retries after the first attempt (`UDF_EXECUTOR_OCC_MAX_RETRIES`, 4). */
  maxRetries?: number;
  initialBackoffMs?: number;
  maxBackoffMs?: number;
  /** Convex time per millisecond of execution here (default 1). */
  timeScale?: number;
  /** Uniform in [0, 1): the backoff's jitter (default Math.random). */
  random?: () => number;
  /** Waits between attempts (default: a real timer). */
  sleep?: (ms: number) => Promise<void>;
  /** The clock of snapshots and commits, in ms (default performance.now). */
  now?: () => number;
  /** A transaction's execution time in Convex, in ms (default: its time here x `timeScale`). */
  duration?: (record: TransactionRecord) => number;
}

/** The largest value of one measure, with the function that reached it. */
export interface Largest {
  value: number;
  fn: string;
}

/** `GET /_dev/stats` -> `transactions`. */
export interface ConcurrencyReport {
  occ: "on" | "off";
  /** Attempts of HTTP mutation calls refused at commit. */
  conflicts: number;
  /** Of which retried. */
  retries: number;
  /** Calls that failed with OptimisticConcurrencyControlFailure after the last retry. */
  failedAfterRetries: number;
  /** Conflicts of scheduled mutations and of actions' runMutation (committed here; Convex retries them). */
  backgroundConflicts: number;
  byFunction: Record<string, { conflicts: number; retries: number; failedAfterRetries: number }>;
  /** The largest committed or failed transaction by each measure (queries included). */
  largest: {
    documentsRead: Largest;
    bytesRead: Largest;
    documentsWritten: Largest;
    bytesWritten: Largest;
    /** Execution time of one attempt here, in ms. */
    ms: Largest;
  };
}

/** Thrown inside a transaction to roll it back: its read set met a concurrent commit. */
export class ConflictSignal extends Error {
  constructor(readonly conflict: Conflict) {
    super("OCC conflict");
  }
}

/** A mutation that conflicted on every attempt: Convex's `user_occ` error. */
export class OccFailure extends Error {
  readonly code = "OptimisticConcurrencyControlFailure";
  constructor(
    readonly conflict: Conflict,
    sameFunction: boolean,
    writer: string,
  ) {
    const who = sameFunction ? "Another call to this mutation" : `A call to "${writer}"`;
    super(
      `Documents read from or written to the table "${conflict.table}" changed while this mutation was being run ` +
        `and on every subsequent retry. ${who} changed the document with ID "${conflict.id}". See https://docs.convex.dev/error#1`,
    );
  }
}

interface Commit {
  fn: string;
  writeSet: WriteSet;
  /** Convex time (ms, this process's clock) at which it committed. */
  at: number;
}

/** How long a commit is kept to check later snapshots against. */
const LOG_MS = 120_000;

const zero = (): Largest => ({ value: 0, fn: "" });

/** One stand-in's concurrency: the log of recent commits, the retry loop and the counters. */
export class ConcurrencyModel {
  readonly enabled: boolean;
  readonly #maxRetries: number;
  readonly #initialBackoffMs: number;
  readonly #maxBackoffMs: number;
  readonly #duration: (record: TransactionRecord) => number;
  readonly #now: () => number;
  readonly #random: () => number;
  readonly #sleep: (ms: number) => Promise<void>;
  #log: Commit[] = [];
  /** Snapshots of HTTP mutation attempts submitted and not yet finished (queued or running). */
  #pending: number[] = [];
  #report: ConcurrencyReport;

  constructor(
    private readonly catalog: IndexCatalog,
    options: OccOptions = {},
  ) {
    this.enabled = options.enabled ?? true;
    this.#maxRetries = options.maxRetries ?? 4;
    this.#initialBackoffMs = options.initialBackoffMs ?? 100;
    this.#maxBackoffMs = options.maxBackoffMs ?? 2000;
    const scale = options.timeScale ?? 1;
    this.#duration = options.duration ?? ((record) => record.durationMs * scale);
    this.#now = options.now ?? (() => performance.now());
    this.#random = options.random ?? Math.random;
    this.#sleep = options.sleep ?? ((ms) => new Promise((resolve) => setTimeout(resolve, ms)));
    this.#report = this.#empty();
  }

  report(): ConcurrencyReport {
    return structuredClone(this.#report);
  }

  reset(): void {
    this.#report = this.#empty();
  }

  /**
   * Runs one call of `fn`: `attempt(observer)` must run the function once with `observer` watching
   * its database work. A mutation is retried on conflict and, past the budget, fails with an
   * `OccFailure`; other kinds run once.
   */
  async run<T>(fn: string, kind: string, attempt: (observer: TransactionRecorder) => Promise<T>): Promise<T> {
    for (let failures = 0; ; failures++) {
      const snapshot = this.#now();
      const http = kind === "mutation";
      if (http) this.#pending.push(snapshot);
      let conflict: { conflict: Conflict; writer: string } | null = null;
      let first = true;
      const recorder = new TransactionRecorder(this.catalog, {
        committing: (record) => {
          const mine = first && kind === "mutation";
          const found = this.#check(record, mine ? snapshot : this.#backgroundAt() - this.#duration(record));
          if (found === null) return;
          if (!mine || !this.enabled) {
            this.#report.backgroundConflicts += 1;
            return;
          }
          conflict = found;
          throw new ConflictSignal(found.conflict);
        },
        finished: (record, committed) => {
          const mine = first;
          first = false;
          this.#note(record);
          if (!committed || record.writeSet.writes.length === 0) return;
          const duration = this.#duration(record);
          const start = mine && kind === "mutation" ? snapshot : this.#backgroundAt() - duration;
          this.#append({ fn: record.fn, writeSet: record.writeSet, at: start + duration });
        },
      });
      try {
        const value = await attempt(recorder);
        if (http) this.#settle(snapshot);
        return value;
      } catch (error) {
        if (http) this.#settle(snapshot);
        const found = conflict as { conflict: Conflict; writer: string } | null;
        if (found === null || !(error instanceof ConflictSignal)) throw error;
        const counts = this.#byFunction(fn);
        this.#report.conflicts += 1;
        counts.conflicts += 1;
        if (failures >= this.#maxRetries) {
          this.#report.failedAfterRetries += 1;
          counts.failedAfterRetries += 1;
          throw new OccFailure(found.conflict, found.writer === fn, found.writer);
        }
        this.#report.retries += 1;
        counts.retries += 1;
        await this.#sleep(this.#backoff(failures));
      }
    }
  }

  /**
   * Convex's time for a transaction that is not an HTTP mutation's attempt (a scheduled
   * mutation, an action's runMutation), run now by the serial executor: just before the earliest
   * HTTP attempt still waiting (whose snapshot is its arrival), or now when none waits. With a
   * backlog, the executor runs behind Convex's clock; placing such a commit at this process's
   * now would put it after every queued call's snapshot and fail them all against it.
   */
  #backgroundAt(): number {
    let earliest = this.#now();
    for (const snapshot of this.#pending) if (snapshot < earliest) earliest = snapshot;
    return earliest;
  }

  #settle(snapshot: number): void {
    const i = this.#pending.indexOf(snapshot);
    if (i >= 0) this.#pending.splice(i, 1);
  }

  /** `Backoff::fail`: min(initial x 2^failures, max) x jitter. */
  #backoff(failures: number): number {
    return Math.min(this.#initialBackoffMs * 2 ** failures, this.#maxBackoffMs) * this.#random();
  }

  /** The first commit after `snapshot` (in Convex's time) whose writes meet `record`'s reads. */
  #check(record: TransactionRecord, snapshot: number): { conflict: Conflict; writer: string } | null {
    if (!this.enabled) return null;
    for (const commit of this.#log) {
      if (commit.at <= snapshot) continue;
      const conflict = findConflict(record.readSet, commit.writeSet);
      if (conflict !== null) return { conflict, writer: commit.fn };
    }
    return null;
  }

  #append(commit: Commit): void {
    const horizon = this.#now() - LOG_MS;
    if (this.#log.length > 0 && this.#log[0].at < horizon) this.#log = this.#log.filter((c) => c.at >= horizon);
    this.#log.push(commit);
  }

  #note(record: TransactionRecord): void {
    const { largest } = this.#report;
    const measures: [keyof ConcurrencyReport["largest"], number][] = [
      ["documentsRead", record.documentsRead],
      ["bytesRead", record.bytesRead],
      ["documentsWritten", record.documentsWritten],
      ["bytesWritten", record.bytesWritten],
      ["ms", Math.round(record.durationMs * 10) / 10],
    ];
    for (const [key, value] of measures) if (value > largest[key].value) largest[key] = { value, fn: record.fn };
  }

  #byFunction(fn: string) {
    this.#report.byFunction[fn] ??= { conflicts: 0, retries: 0, failedAfterRetries: 0 };
    return this.#report.byFunction[fn];
  }

  #empty(): ConcurrencyReport {
    return {
      occ: this.enabled ? "on" : "off",
      conflicts: 0,
      retries: 0,
      failedAfterRetries: 0,
      backgroundConflicts: 0,
      byFunction: {},
      largest: { documentsRead: zero(), bytesRead: zero(), documentsWritten: zero(), bytesWritten: zero(), ms: zero() },
    };
  }
}
