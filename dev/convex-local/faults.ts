/**
 * Fault injection (dev only, `POST /_dev/faults`): matching requests get what a real deployment,
 * or a proxy in front of it, answers under trouble, before anything runs. Codes and messages are
 * convex-backend's (crates/application/src/application_function_runner/mod.rs,
 * crates/errors/src/lib.rs, crates/isolate/src/metrics.rs).
 */
import { RequestError } from "./wire.js";

export type FaultStatus = 413 | 429 | 500 | 503;

/** A fault as set: `remaining` null means until cleared; `paths` null means every `/api/` route. */
export interface Fault {
  status: FaultStatus;
  code: string;
  remaining: number | null;
  paths: string[] | null;
}

/** The answer to a request that a fault matched. */
export interface FaultAnswer {
  status: number;
  body: string;
  type: string;
}

type Describe = (path: string) => string;

const OCC =
  "Documents read from or written to some table changed while this mutation was being run and on every subsequent retry. See https://docs.convex.dev/error#1";

/** Every fault by code; the first of each status is its default. */
const FAULTS: Record<string, { status: FaultStatus; message: Describe }> = {
  TooManyConcurrentRequests: { status: 429, message: tooManyConcurrent },
  OptimisticConcurrencyControlFailure: { status: 503, message: () => OCC },
  ExpiredInQueue: {
    status: 503,
    message: () =>
      "Too many concurrent requests in a short period of time. Spread out your requests out over time or throttle them to avoid errors.",
  },
  WorkerOverloaded: { status: 503, message: () => "There are no available workers to process the request" },
  InternalServerError: { status: 500, message: () => "Your request couldn't be completed. Try again later." },
  // Not Convex's: the open-source backend answers 400 BadJsonBody (see wire.ts). This is a proxy in front.
  PayloadTooLarge: { status: 413, message: () => "Payload Too Large" },
};

/** `TooManyConcurrentRequests` as the backend words it, for the kind of function the route runs. */
function tooManyConcurrent(path: string): string {
  const kind = path.startsWith("/api/mutation") ? "mutation" : path.startsWith("/api/action") ? "action" : "query";
  const permits = kind === "action" ? 64 : 16;
  const more =
    permits > 16
      ? "If you need more resources, please contact support."
      : "To get more resources, upgrade to Convex Pro. If you are already on Convex Pro, please contact support.";
  return `Too many concurrent requests. Your backend is limited to ${permits} concurrent ${kind}s. ${more}`;
}

/** The fault currently set on one stand-in. */
export class FaultInjector {
  #fault: Fault | null = null;

  get current(): Fault | null {
    return this.#fault;
  }

  /** Sets the fault described by a `POST /_dev/faults` body (replacing any other). */
  set(body: Record<string, unknown>): Fault {
    this.#fault = parseFault(body);
    return this.#fault;
  }

  clear(): void {
    this.#fault = null;
  }

  /** The answer for a request to `path` if the fault matches it (counting it), else null. */
  take(path: string): FaultAnswer | null {
    const fault = this.#fault;
    if (fault === null || !matches(fault, path)) return null;
    if (fault.remaining !== null && --fault.remaining === 0) this.#fault = null;
    return answer(fault, path);
  }
}

function matches(fault: Fault, path: string): boolean {
  if (path.startsWith("/_dev/")) return false;
  if (fault.paths === null) return path.startsWith("/api/");
  return fault.paths.some((prefix) => path === prefix || (prefix.endsWith("/") && path.startsWith(prefix)));
}

function answer({ status, code }: Fault, path: string): FaultAnswer {
  const message = FAULTS[code].message(path);
  if (status === 413) return { status, body: message, type: "text/plain; charset=utf-8" };
  return { status, body: JSON.stringify({ code, message }), type: "application/json" };
}

function parseFault(body: Record<string, unknown>): Fault {
  const { status, code, times, paths } = body;
  const known = Object.keys(FAULTS).filter((name) => FAULTS[name].status === status);
  if (known.length === 0) invalid("status must be 413, 429, 500 or 503");
  if (code !== undefined && !known.includes(code as string)) invalid(`code for ${status} must be one of ${known.join(", ")}`);
  if (times !== undefined && (!Number.isSafeInteger(times) || (times as number) < 1)) invalid("times must be an integer >= 1");
  const isPathList = Array.isArray(paths) && paths.length > 0 && paths.every((p) => typeof p === "string" && p.startsWith("/"));
  if (paths !== undefined && !isPathList) invalid('paths must be a non-empty list of paths starting with "/"');
  return {
    status: status as FaultStatus,
    code: (code as string | undefined) ?? known[0],
    remaining: (times as number | undefined) ?? null,
    paths: (paths as string[] | undefined) ?? null,
  };
}

function invalid(message: string): never {
  throw new RequestError(400, "BadFault", message);
}
