/**
 * Function failures as a Convex deployment reports them (crates/application/src/redaction.rs):
 * HTTP 200 `{"status":"error","errorMessage":"[Request ID: <id>] Server Error", "errorData"?}`.
 * A production deployment stops there; a development one adds the error after a newline
 * ("Uncaught Error: boom", "ArgumentValidationError: ..."). A ConvexError's data is kept in both.
 * The deployment's own log always has the full text (`deploymentLogLine`).
 */
import { randomBytes } from "node:crypto";
import type { JSONValue, Value } from "convex/values";
import { convexLimitMessage } from "./limits.js";
import { OccFailure } from "./occ.js";

/** How much a function error tells the caller: "prod" (default) or "dev" (env CONVEX_LOCAL_ERRORS). */
export type ErrorStyle = "prod" | "dev";
export const ERROR_STYLES: readonly ErrorStyle[] = ["prod", "dev"];

export type FunctionKind = "query" | "mutation" | "action";

/** A failed function call: `detail` is the development-style text, `data` a ConvexError's data. */
export interface Failure {
  detail: string;
  data?: Value;
  /** A system error answered as a request error (an OCC failure: 503 `{"code","message"}`), not as a function error. */
  system?: { status: number; code: string; message: string };
}

/** A failure the stand-in itself decides (an unknown function, a mutation sent to /api/query, ...). */
export class FunctionError extends Error {}

/**
 * What `error`, thrown by convex-test, is in Convex's terms. `started` tells whether the function
 * body ran: convex-test validates arguments before, with the same "Validator error" as the schema.
 * An argument-validation error quotes the arguments, as Convex's does ("Object: ...").
 */
export function describeFailure(error: unknown, started: boolean, args: JSONValue): Failure {
  if (error instanceof FunctionError) return { detail: error.message };
  if (error instanceof OccFailure) {
    return { detail: error.message, system: { status: 503, code: error.code, message: error.message } };
  }
  if (!(error instanceof Error)) return { detail: `Uncaught ${String(error)}` };
  if (error.name === "ConvexError" && "data" in error) {
    return { detail: `Uncaught ConvexError: ${error.message}`, data: error.data as Value };
  }
  const validation = /^Validator error: ([\s\S]*)$/.exec(error.message);
  if (validation !== null && !started) {
    return { detail: `ArgumentValidationError: ${validation[1]}\n\nObject: ${JSON.stringify(args)}` };
  }
  return { detail: `Uncaught ${error.name}: ${convexLimitMessage(error.message)}` };
}

/** `errorMessage` of a failed call, in `style`. */
export function errorMessage(requestId: string, failure: Failure, style: ErrorStyle): string {
  const redacted = `[Request ID: ${requestId}] Server Error`;
  return style === "dev" ? `${redacted}\n${failure.detail}` : redacted;
}

/** The caller's `convex-request-id` header, or 8 random bytes in hex, as `RequestId::new()`. */
export function requestIdFor(header: string | string[] | undefined): string {
  return typeof header === "string" && /^[\w-]{1,64}$/.test(header) ? header : randomBytes(8).toString("hex");
}

export interface FailedCall {
  requestId: string;
  kind: FunctionKind | undefined;
  path: string;
  failure: Failure;
  startedAt: number;
}

/** One line of the deployment's log for a failed call: a log stream's `function_execution` event. */
export function deploymentLogLine({ requestId, kind, path, failure, startedAt }: FailedCall): string {
  return JSON.stringify({
    topic: "function_execution",
    timestamp: startedAt,
    function: { type: kind, path, request_id: requestId },
    execution_time_ms: Date.now() - startedAt,
    status: "failure",
    error_message: failure.detail,
    run_reason: "httpApi",
  });
}
