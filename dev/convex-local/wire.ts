/**
 * Convex's wire format, as the open-source backend writes it (crates/local_backend/src/
 * public_api.rs, crates/common/src/http/): JSON with every number a float, request errors as
 * 4xx/5xx `{"code","message"}`, and request bodies bounded.
 */
import type { IncomingMessage, ServerResponse } from "node:http";
import type { JSONValue, Value } from "convex/values";

/** `MAX_BACKEND_PUBLIC_API_REQUEST_SIZE`: the body limit of the public `/api/*` routes. */
export const MAX_API_BODY_BYTES = (1 << 24) + 2000;

/** A request the backend refuses before running anything: `{"code","message"}` with `status`. */
export class RequestError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** An error without metadata: Convex answers 500 InternalServerError and says nothing more. */
export function internalError(): RequestError {
  return new RequestError(500, "InternalServerError", "Your request couldn't be completed. Try again later.");
}

export function badJsonBody(message: string): RequestError {
  return new RequestError(400, "BadJsonBody", message);
}

/** `SerializedTs`: base64 of a u64, little-endian (query_ts, and the sync protocol's timestamps). */
export function encodeTs(ts: bigint): string {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64LE(ts);
  return bytes.toString("base64");
}

/** Convex's "json" (clean) export: int64 as string, bytes as base64, NaN/Infinity as strings. */
export function exportClean(value: Value): JSONValue {
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") return Number.isFinite(value) ? value : String(value);
  if (value instanceof ArrayBuffer) return Buffer.from(value).toString("base64");
  if (Array.isArray(value)) return value.map(exportClean);
  if (value !== null && typeof value === "object") {
    const fields = Object.entries(value).filter((field): field is [string, Value] => field[1] !== undefined);
    return Object.fromEntries(fields.map(([k, v]) => [k, exportClean(v)]));
  }
  return value;
}

/** JSON text in which every number is a float (`1.0`), as serde_json writes Convex's f64. */
export function floatJson(value: unknown): string {
  if (typeof value === "number") {
    if (Object.is(value, -0)) return "-0.0";
    const text = JSON.stringify(value);
    return /^-?\d+$/.test(text) ? `${text}.0` : text;
  }
  if (Array.isArray(value)) return `[${value.map(floatJson).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const fields = Object.entries(value).filter(([, v]) => v !== undefined);
    return `{${fields.map(([k, v]) => `${JSON.stringify(k)}:${floatJson(v)}`).join(",")}}`;
  }
  return JSON.stringify(value ?? null);
}

export function send(res: ServerResponse, status: number, body: string, type = "application/json"): void {
  res.writeHead(status, { "Content-Type": type, "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

export function sendError(res: ServerResponse, error: RequestError): void {
  send(res, error.status, floatJson({ code: error.code, message: error.message }));
}

/** The body of a JSON request (Convex's `Json` extractor): a JSON object of at most `MAX_API_BODY_BYTES`. */
export async function readJsonBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const type = req.headers["content-type"] ?? "";
  if (!/^application\/([\w.+-]+\+)?json\s*(;|$)/i.test(type)) {
    throw badJsonBody("Expected request with `Content-Type: application/json`");
  }
  const text = (await readBounded(req, MAX_API_BODY_BYTES)).toString("utf8");
  let body: unknown;
  try {
    body = JSON.parse(text);
  } catch (e) {
    throw badJsonBody(`Failed to parse the request body as JSON: ${(e as Error).message}`);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw badJsonBody("Failed to deserialize the JSON body into the target type: expected a JSON object");
  }
  return body as Record<string, unknown>;
}

/**
 * The request body, refused as axum's body limit does ("length limit exceeded", a 400
 * `BadJsonBody` from Convex's extractor) once it passes `limit`. The rest of an oversized body is
 * read and dropped, so that the client, still sending, gets the answer.
 */
export function readBounded(req: IncomingMessage, limit: number): Promise<Buffer> {
  const tooLarge = () => badJsonBody("Failed to buffer the request body: length limit exceeded");
  if (Number(req.headers["content-length"] ?? 0) > limit) {
    req.resume();
    return Promise.reject(tooLarge());
  }
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let size = 0;
    const stop = () => {
      req.off("data", onData).off("end", onEnd).off("error", reject);
    };
    const onData = (chunk: Buffer) => {
      size += chunk.length;
      chunks.push(chunk);
      if (size <= limit) return;
      stop();
      req.resume();
      reject(tooLarge());
    };
    const onEnd = () => {
      stop();
      resolve(Buffer.concat(chunks));
    };
    req.on("data", onData).on("end", onEnd).on("error", reject);
  });
}
