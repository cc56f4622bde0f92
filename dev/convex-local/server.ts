/**
 * convex-local: a DEVELOPMENT STAND-IN for Convex's HTTP API (not Convex).
 *
 * Runs the functions of ../../convex through the official `convex-test`
 * library (which enforces their argument validators and the schema) and
 * answers like a Convex deployment's `/api/query`, `/api/mutation`,
 * `/api/action`, `/api/function` and `/api/run/<module>/<function>`.
 * The wire format follows the open-source backend (crates/local_backend/src/
 * public_api.rs): function errors are HTTP 200 `{"status":"error", ...}`,
 * request errors are 4xx `{"code","message"}`, numbers are written as floats.
 *
 * `npm start` (PORT, default 3210; PORT=0 picks a free port) prints
 * "convex-local listening on http://127.0.0.1:PORT" once it accepts requests.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { pathToFileURL } from "node:url";
import { version as convexVersion } from "convex";
import { convexTest } from "convex-test";
import { makeFunctionReference, type FunctionReference } from "convex/server";
import { convexToJson, jsonToConvex, type JSONValue, type Value } from "convex/values";
import * as crons from "../../convex/crons.js";
import * as health from "../../convex/health.js";
import schema from "../../convex/schema.js";

/** The function modules of ../../convex, by module path. Add new modules here. */
const FUNCTION_MODULES: Record<string, Record<string, unknown>> = { crons, health };

type Kind = "query" | "mutation" | "action";
type Format = "json" | "convex_encoded_json";
type Registered = { isQuery?: boolean; isMutation?: boolean; isAction?: boolean; isPublic?: boolean };

const ENDPOINTS: Record<string, Kind | "any"> = {
  "/api/query": "query",
  "/api/mutation": "mutation",
  "/api/action": "action",
  "/api/function": "any",
};
const TEXT_PAGES: Record<string, string> = {
  "/": "This Convex deployment is running. See https://docs.convex.dev/.",
  "/version": `convex-local (convex ${convexVersion})`,
  "/instance_version": `convex-local (convex ${convexVersion})`,
};
const FORMATS: Record<string, Format> = {
  json: "json",
  convex_clean_json: "json",
  convex_encoded_json: "convex_encoded_json",
  convex_json: "convex_encoded_json",
};

/** A request the backend refuses before running anything: 4xx {"code","message"}. */
class RequestError extends Error {
  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

/** A function-level failure, answered as HTTP 200 {"status":"error"} like Convex does. */
class FunctionError extends Error {}

// ---------------------------------------------------------------- JSON output

/** Convex's "json" (clean) export: int64 as string, bytes as base64, NaN/Infinity as strings. */
function exportClean(value: Value): JSONValue {
  if (typeof value === "bigint") return value.toString();
  if (typeof value === "number") return Number.isFinite(value) ? value : String(value);
  if (value instanceof ArrayBuffer) return Buffer.from(value).toString("base64");
  if (Array.isArray(value)) return value.map(exportClean);
  if (value !== null && typeof value === "object") {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, exportClean(v)]));
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

function send(res: ServerResponse, status: number, body: string, type = "application/json") {
  res.writeHead(status, { "Content-Type": type, "Content-Length": Buffer.byteLength(body) });
  res.end(body);
}

// ------------------------------------------------------------ request parsing

function parseFunctionPath(path: string): { module: string; name: string; display: string } {
  const match = /^([\w\-./]+?)(?:\.js)?(?::([A-Za-z_$][\w$]*))?$/.exec(path);
  if (!match || match[1].split("/").some((part) => part === "" || part.startsWith("."))) {
    throw new RequestError(
      400,
      "BadConvexFunctionIdentifier",
      `${path} is not a valid path to a Convex function.`,
    );
  }
  const [, module, name = "default"] = match;
  return { module, name, display: `${module}:${name}` };
}

/** `/api/run/health/instance` -> `health:instance` (like public_function_post_with_path). */
function pathFromRunUrl(rest: string): string {
  const missing = () =>
    new RequestError(400, "MissingIdentifier", "Path or function name not provided in path, e.g. /api/run/messages/list");
  let parts: string[];
  try {
    parts = rest.split("/").map(decodeURIComponent);
  } catch {
    throw missing();
  }
  if (parts.length < 2) throw missing();
  const name = parts.pop();
  return `${parts.join("/")}:${name}`;
}

async function readBody(req: IncomingMessage): Promise<Record<string, unknown>> {
  const type = req.headers["content-type"] ?? "";
  if (!/^application\/([\w.+-]+\+)?json\s*(;|$)/i.test(type)) {
    throw new RequestError(400, "BadJsonBody", "Expected request with `Content-Type: application/json`");
  }
  const chunks: Buffer[] = [];
  for await (const chunk of req) chunks.push(chunk as Buffer);
  let body: unknown;
  try {
    body = JSON.parse(Buffer.concat(chunks).toString("utf8"));
  } catch (e) {
    throw new RequestError(400, "BadJsonBody", `Failed to parse the request body as JSON: ${(e as Error).message}`);
  }
  if (body === null || typeof body !== "object" || Array.isArray(body)) {
    throw new RequestError(400, "BadJsonBody", "Failed to deserialize the JSON body: expected an object");
  }
  return body as Record<string, unknown>;
}

// ------------------------------------------------------------- function calls

function toFunctionError(error: unknown): { errorMessage: string; errorData?: Value } {
  if (error instanceof FunctionError) return { errorMessage: error.message };
  if (error instanceof Error) {
    if ("data" in error && error.name === "ConvexError") {
      return { errorMessage: `Uncaught ConvexError: ${error.message}`, errorData: error.data as Value };
    }
    const validation = /^Validator error: ([\s\S]*)$/.exec(error.message);
    if (validation) return { errorMessage: `ArgumentValidationError: ${validation[1]}` };
    return { errorMessage: `Uncaught ${error.name}: ${error.message}` };
  }
  return { errorMessage: `Uncaught ${String(error)}` };
}

/** The HTTP stand-in itself: one convex-test backend, one function at a time. */
export function createConvexLocal(): Server {
  const modules: Record<string, () => Promise<unknown>> = {
    "convex/_generated/server.js": () => import("../../convex/_generated/server.js"),
  };
  for (const [path, module] of Object.entries(FUNCTION_MODULES)) modules[`convex/${path}.ts`] = async () => module;
  const t = convexTest(schema, modules);
  let tail: Promise<unknown> = Promise.resolve();
  const serialized = <T>(fn: () => Promise<T>): Promise<T> => {
    const run = tail.then(fn, fn);
    tail = run.catch(() => undefined);
    return run;
  };

  async function call(kind: Kind | "any", path: string, rawArgs: unknown): Promise<Value> {
    const { module, name, display } = parseFunctionPath(path);
    const fn = (Object.hasOwn(FUNCTION_MODULES, module) ? FUNCTION_MODULES[module][name] : undefined) as
      | Registered
      | undefined;
    if (!fn || (typeof fn !== "function" && typeof fn !== "object") || !fn.isPublic) {
      throw new FunctionError(
        `Could not find public function for '${display}'. Did you forget to run \`npx convex dev\` or \`npx convex deploy\`?`,
      );
    }
    const actual: Kind = fn.isQuery ? "query" : fn.isMutation ? "mutation" : "action";
    if (kind !== "any" && kind !== actual) {
      const title = (k: string) => k[0].toUpperCase() + k.slice(1);
      throw new FunctionError(`Trying to execute ${display} as ${title(kind)}, but it is defined as ${title(actual)}.`);
    }
    // The official JS client sends [args]; Convex also takes the args object itself.
    const positional = Array.isArray(rawArgs) ? rawArgs : [rawArgs];
    if (positional.length !== 1) {
      throw new FunctionError(`Invalid arguments for ${display}: expected one arguments object, got ${positional.length}`);
    }
    let args: Value;
    try {
      args = jsonToConvex(positional[0] as JSONValue);
    } catch (e) {
      throw new FunctionError(`Invalid arguments for ${display}: ${(e as Error).message}`);
    }
    const run = t[actual] as (ref: FunctionReference<Kind>, args: Value) => Promise<Value>;
    return await serialized(() => run(makeFunctionReference<Kind>(`${module}:${name}`), args));
  }

  async function handle(req: IncomingMessage, res: ServerResponse) {
    const url = new URL(req.url ?? "/", "http://127.0.0.1");
    const page = TEXT_PAGES[url.pathname];
    const run = url.pathname.startsWith("/api/run/");
    const kind = run ? "any" : ENDPOINTS[url.pathname];
    if (page === undefined && kind === undefined) {
      throw new RequestError(404, "NotFound", `No route for ${url.pathname}`);
    }
    const allowed = page !== undefined ? ["GET", "HEAD"] : ["POST"];
    if (!allowed.includes(req.method ?? "")) {
      res.setHeader("Allow", allowed.join(", "));
      throw new RequestError(405, "MethodNotAllowed", `${req.method} is not allowed on ${url.pathname}`);
    }
    if (page !== undefined) return send(res, 200, page, "text/plain; charset=utf-8");

    const body = await readBody(req);
    const path = run ? pathFromRunUrl(url.pathname.slice("/api/run/".length)) : body.path;
    if (typeof path !== "string") throw new RequestError(400, "BadJsonBody", "missing field `path` (a string)");
    if (!("args" in body)) throw new RequestError(400, "BadJsonBody", "missing field `args`");
    const formatName = String(body.format ?? "json");
    const format = Object.hasOwn(FORMATS, formatName) ? FORMATS[formatName] : undefined;
    if (format === undefined) {
      throw new RequestError(400, "BadFormat", `format param must be one of [\`json\`]. Got ${formatName}`);
    }
    const exportValue = (v: Value) => (format === "json" ? exportClean(v) : convexToJson(v));
    let reply: Record<string, JSONValue | undefined>;
    try {
      const value = await call(kind, path, body.args);
      reply = { status: "success", value: exportValue(value) };
    } catch (error) {
      if (error instanceof RequestError) throw error;
      const { errorMessage, errorData } = toFunctionError(error);
      reply = { status: "error", errorMessage, errorData: errorData === undefined ? undefined : exportValue(errorData) };
    }
    send(res, 200, floatJson(reply));
  }

  return createServer((req, res) => {
    handle(req, res).catch((error: unknown) => {
      const e = error instanceof RequestError ? error : new RequestError(500, "InternalServerError", String(error));
      if (!res.headersSent) send(res, e.status, floatJson({ code: e.code, message: e.message }));
      else res.destroy();
    });
  });
}

/** Starts the stand-in on 127.0.0.1:port (0 picks a free port). */
export async function startServer(port: number): Promise<{ server: Server; url: string }> {
  const server = createConvexLocal();
  await new Promise<void>((resolve, reject) => {
    server.once("error", reject);
    server.listen(port, "127.0.0.1", resolve);
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  return { server, url };
}

async function main() {
  const port = Number(process.env.PORT ?? 3210);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`convex-local: PORT must be 0..65535, got ${process.env.PORT}`);
    process.exit(2);
  }
  if (!process.env.HEALTH_SIDECAR_SECRET) {
    console.error("convex-local: HEALTH_SIDECAR_SECRET is not set: every health function will answer unauthorized");
  }
  const { server, url } = await startServer(port);
  console.log(`convex-local listening on ${url}`);
  const stop = () => {
    server.close(() => process.exit(0));
    server.closeAllConnections();
  };
  process.once("SIGTERM", stop);
  process.once("SIGINT", stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((error: unknown) => {
    console.error("convex-local:", error);
    process.exit(1);
  });
}
