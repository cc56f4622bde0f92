/**
 * convex-local: a DEVELOPMENT STAND-IN for Convex's HTTP API (not Convex).
 *
 * Runs the functions of ../../convex through the official `convex-test` library (which enforces
 * their argument validators, the schema and, here, Convex's transaction limits) and answers like
 * a Convex deployment: `/api/query`, `/api/mutation`, `/api/action`, `/api/function`,
 * `/api/run/<module>/<function>`, `/api/query_ts`, `/api/query_at_ts`, and the public routes
 * `/`, `/version`, `/instance_version`, `/instance_name`, `/echo`. The wire format follows the
 * open-source backend (wire.ts); function errors are redacted as in production unless
 * CONVEX_LOCAL_ERRORS=dev (failures.ts), and each one is logged to stdout as the deployment's
 * log would have it. Dev-only routes under `/_dev/` count usage as Convex bills it (usage.ts),
 * inject faults (faults.ts) and list tables.
 *
 * `npm start` (PORT, default 3210; PORT=0 picks a free port) prints
 * "convex-local listening on http://127.0.0.1:PORT" as its first line once it accepts requests.
 */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http";
import type { AddressInfo } from "node:net";
import { Transform } from "node:stream";
import { pipeline } from "node:stream/promises";
import { pathToFileURL } from "node:url";
import { version as convexVersion } from "convex";
import { convexTest } from "convex-test";
import { makeFunctionReference, type FunctionReference, type GenericSchema, type SchemaDefinition } from "convex/server";
import { convexToJson, jsonToConvex, type JSONValue, type Value } from "convex/values";
import * as crons from "../../convex/crons.js";
import * as health from "../../convex/health.js";
import repoSchema from "../../convex/schema.js";
import {
  ERROR_STYLES,
  FunctionError,
  deploymentLogLine,
  describeFailure,
  errorMessage,
  requestIdFor,
  type ErrorStyle,
  type FailedCall,
  type FunctionKind,
} from "./failures.js";
import { indexCatalog } from "./bandwidth.js";
import { FaultInjector } from "./faults.js";
import { installIndexes } from "./indexes.js";
import { CLOUD_LIMITS } from "./limits.js";
import { ConcurrencyModel, type ConcurrencyReport, type OccOptions } from "./occ.js";
import type { ReadSet } from "./readsets.js";
import { attachSync, type SyncServer } from "./sync_ws.js";
import { installDatabaseObserver, observeAlso, withCommitHooks } from "./syscalls.js";
import { UsageMeter, type UsageReport } from "./usage.js";
import {
  RequestError,
  badJsonBody,
  encodeTs,
  exportClean,
  floatJson,
  internalError,
  readJsonBody,
  send,
  sendError,
} from "./wire.js";

/** The function modules of ../../convex, by module path. Add new modules here. */
const FUNCTION_MODULES: FunctionModules = { crons, health };

/** `MAX_ECHO_BYTES`: `/echo` answers bodies up to 128 MiB. */
const MAX_ECHO_BYTES = 128 * 1024 * 1024;
const TEXT = "text/plain; charset=utf-8";

export type FunctionModules = Record<string, Record<string, unknown>>;
type Schema = SchemaDefinition<GenericSchema, boolean>;
type Format = "json" | "convex_encoded_json";
type Registered = { isQuery?: boolean; isMutation?: boolean; isAction?: boolean; isPublic?: boolean };

export interface ConvexLocalOptions {
  /** Function modules by module path (default: ../../convex's); tests pass their own. */
  functions?: FunctionModules;
  /** The schema of `functions` (default: ../../convex/schema.ts). */
  schema?: Schema;
  /** "prod" (default) redacts function errors as a production deployment; "dev" shows them. */
  errors?: ErrorStyle;
  /** What `GET /instance_name` answers (default "convex-local"). */
  name?: string;
  /** Where deployment log lines go (default: stdout). */
  log?: (line: string) => void;
  /** Optimistic concurrency (occ.ts): on by default; `{ enabled: false }` for deterministic tests. */
  occ?: OccOptions;
}

/** `GET /_dev/stats`: usage by function, and the concurrency counters (occ.ts). */
export type StatsReport = UsageReport & { transactions: ConcurrencyReport };

/** A stand-in: its HTTP server (with the sync protocol, sync_ws.ts) and, for in-process use, its usage stats. */
export interface ConvexLocal {
  server: Server;
  sync: SyncServer;
  stats(): StatsReport;
  resetStats(): void;
}

const FORMATS: Record<string, Format> = {
  json: "json",
  convex_clean_json: "json",
  convex_encoded_json: "convex_encoded_json",
  convex_json: "convex_encoded_json",
};

// ------------------------------------------------------------------ the backend

/** A call's outcome, with what its transaction read (the sync protocol re-runs queries by it). */
type CallResult = ({ ok: true; value: Value } | ({ ok: false } & Omit<FailedCall, "requestId">)) & { readSet: ReadSet };

/** One convex-test deployment, running one function at a time and counting its usage. */
class Backend {
  readonly meter: UsageMeter;
  readonly occ: ConcurrencyModel;
  readonly #functions: FunctionModules;
  readonly #tables: ReadonlySet<string>;
  readonly #t;
  #tail: Promise<unknown> = Promise.resolve();
  #lastTs = 0n;

  constructor(functions: FunctionModules, schema: Schema, occ: OccOptions = {}) {
    const modules: Record<string, () => Promise<unknown>> = {
      "convex/_generated/server.js": () => import("../../convex/_generated/server.js"),
    };
    for (const [path, module] of Object.entries(functions)) {
      const hooked = withCommitHooks(module);
      modules[`convex/${path}.ts`] = async () => hooked;
    }
    this.#functions = functions;
    this.#tables = new Set(Object.keys(schema.tables));
    this.#t = convexTest({ schema, modules, transactionLimits: CLOUD_LIMITS });
    installDatabaseObserver();
    installIndexes(this.#t, schema);
    this.meter = new UsageMeter(schema);
    this.occ = new ConcurrencyModel(indexCatalog(schema), occ);
  }

  report(): StatsReport {
    return { ...this.meter.report(), transactions: this.occ.report() };
  }

  resetStats(): void {
    this.meter.reset();
    this.occ.reset();
  }

  /** Calls the public function at `path` as `endpoint` requires; a failure is a result, not an exception. */
  async call(endpoint: FunctionKind | "any", path: string, rawArgs: unknown): Promise<CallResult> {
    const { module, name, display } = parseFunctionPath(path);
    const fn = this.#publicFunction(module, name);
    const kind = fn !== undefined ? kindOf(fn) : endpoint === "any" ? undefined : endpoint;
    const positional = Array.isArray(rawArgs) ? rawArgs : [rawArgs];
    const startedAt = Date.now();
    const measured = await this.meter.measure(display, () =>
      this.occ.run(display, kind ?? "unknown", (observer) =>
        this.#serialized(() => observeAlso(observer, () => this.#run(endpoint, fn, display, positional))),
      ),
    );
    if (measured.ok) return measured;
    const failure = describeFailure(measured.error, measured.started, positional[0] as JSONValue);
    return { ok: false, kind, path: display, failure, startedAt, readSet: measured.readSet };
  }

  /** Every document of `table` of the schema (a dev route; not counted in the stats). */
  async documents(table: string): Promise<Value[]> {
    if (!this.#tables.has(table)) throw new RequestError(404, "NotFound", `No table ${table} in the schema`);
    return await this.#serialized(() => this.#t.run(async (ctx) => await ctx.db.query(table).collect()));
  }

  /** A commit timestamp for `/api/query_ts`: nanoseconds since the epoch, increasing. */
  latestTimestamp(): bigint {
    const now = BigInt(Date.now()) * 1_000_000n;
    this.#lastTs = now > this.#lastTs ? now : this.#lastTs + 1n;
    return this.#lastTs;
  }

  async #run(endpoint: FunctionKind | "any", fn: Registered | undefined, display: string, positional: unknown[]) {
    if (fn === undefined) throw new FunctionError(`Could not find public function for '${display}'.`);
    const actual = kindOf(fn);
    if (endpoint !== "any" && endpoint !== actual) {
      throw new FunctionError(`Trying to execute ${display} as ${title(endpoint)}, but it is defined as ${title(actual)}.`);
    }
    // The official JS client sends [args]; Convex also takes the args object itself.
    if (positional.length !== 1) {
      throw new FunctionError(`Invalid arguments for ${display}: expected one arguments object, got ${positional.length}`);
    }
    const args = decodeArgs(display, positional[0]);
    const run = this.#t[actual] as (ref: FunctionReference<FunctionKind>, args: Value) => Promise<Value>;
    return await run(makeFunctionReference<FunctionKind>(display), args);
  }

  #publicFunction(module: string, name: string): Registered | undefined {
    const fn = (Object.hasOwn(this.#functions, module) ? this.#functions[module][name] : undefined) as
      | Registered
      | undefined;
    return fn !== undefined && (typeof fn === "function" || typeof fn === "object") && fn.isPublic ? fn : undefined;
  }

  #serialized<T>(fn: () => Promise<T>): Promise<T> {
    const run = this.#tail.then(fn, fn);
    this.#tail = run.catch(() => undefined);
    return run;
  }
}

function kindOf(fn: Registered): FunctionKind {
  return fn.isQuery ? "query" : fn.isMutation ? "mutation" : "action";
}

function title(kind: string): string {
  return kind[0].toUpperCase() + kind.slice(1);
}

function decodeArgs(display: string, args: unknown): Value {
  try {
    return jsonToConvex(args as JSONValue);
  } catch (e) {
    throw new FunctionError(`Invalid arguments for ${display}: ${(e as Error).message}`);
  }
}

// ------------------------------------------------------------ request parsing

function parseFunctionPath(path: string): { module: string; name: string; display: string } {
  const match = /^([\w\-./]+?)(?:\.js)?(?::([A-Za-z_$][\w$]*))?$/.exec(path);
  if (!match || match[1].split("/").some((part) => part === "" || part.startsWith("."))) {
    throw new RequestError(400, "BadConvexFunctionIdentifier", `${path} is not a valid path to a Convex function.`);
  }
  const [, module, name = "default"] = match;
  return { module, name, display: `${module}:${name}` };
}

/** `/api/run/health/ping` -> `health:ping` (like public_function_post_with_path). */
function pathFromRunUrl(rest: string): string {
  const parts = rest.split("/").map(decodePath);
  if (parts.length < 2) {
    throw new RequestError(400, "MissingIdentifier", "Path or function name not provided in path, e.g. /api/run/messages/list");
  }
  const name = parts.pop();
  return `${parts.join("/")}:${name}`;
}

/** A percent-decoded URL path segment; a malformed one is a 400. */
function decodePath(segment: string): string {
  try {
    return decodeURIComponent(segment);
  } catch {
    throw new RequestError(400, "BadRequest", `Malformed path segment ${segment}`);
  }
}

function formatOf(name: unknown): Format {
  const text = String(name ?? "json");
  if (!Object.hasOwn(FORMATS, text)) throw new RequestError(400, "BadFormat", `format param must be one of [\`json\`]. Got ${text}`);
  return FORMATS[text];
}

/** `Timestamp::try_from(SerializedTs)`: a malformed one is an error without metadata (500). */
function checkTs(ts: unknown): void {
  if (ts === undefined) throw badJsonBody("Failed to deserialize the JSON body into the target type: missing field `ts`");
  if (typeof ts !== "string") throw badJsonBody("Failed to deserialize the JSON body into the target type: ts: expected a string");
  if (!/^[A-Za-z0-9+/]*={0,2}$/.test(ts) || Buffer.from(ts, "base64").length !== 8) throw internalError();
}

// ------------------------------------------------------------------ the routes

type Handler = (req: IncomingMessage, res: ServerResponse, path: string) => Promise<void> | void;

interface Route {
  methods: readonly string[];
  handle: Handler;
}

interface FunctionEndpoint {
  kind: FunctionKind | "any";
  /** `/api/run/<module>/<function>`: the path comes from the URL, `format` defaults to json. */
  pathFromUrl?: true;
  /** `/api/query_at_ts`: the body carries a `ts`. */
  atTs?: true;
}

const FUNCTION_ENDPOINTS: Record<string, FunctionEndpoint> = {
  "/api/query": { kind: "query" },
  "/api/mutation": { kind: "mutation" },
  "/api/action": { kind: "action" },
  "/api/function": { kind: "any" },
  "/api/query_at_ts": { kind: "query", atTs: true },
};
const RUN_PREFIX = "/api/run/";
const TABLES_PREFIX = "/_dev/tables/";
const GET = ["GET", "HEAD"] as const;
const POST = ["POST"] as const;

/** What the routes of one stand-in share. */
interface Context {
  backend: Backend;
  faults: FaultInjector;
  style: ErrorStyle;
  log: (line: string) => void;
}

/** The HTTP stand-in itself. */
export function createConvexLocal(options: ConvexLocalOptions = {}): ConvexLocal {
  const context: Context = {
    backend: new Backend(options.functions ?? FUNCTION_MODULES, options.schema ?? repoSchema, options.occ),
    faults: new FaultInjector(),
    style: options.errors ?? "prod",
    log: options.log ?? ((line: string) => console.log(line)),
  };
  let routes: ReadonlyMap<string, Route> = new Map();
  const server = createServer((req, res) => {
    handle(context, routes, req, res).catch((error: unknown) => {
      if (!(error instanceof RequestError)) console.error("convex-local:", error);
      if (res.headersSent) return void res.destroy();
      req.resume();
      sendError(res, error instanceof RequestError ? error : internalError());
    });
  });
  const sync = attachSync(server, context);
  routes = new Map([...routeTable(context, options.name ?? "convex-local"), ...sync.routes]);
  const { backend } = context;
  return { server, sync, stats: () => backend.report(), resetStats: () => backend.resetStats() };
}

async function handle(context: Context, routes: ReadonlyMap<string, Route>, req: IncomingMessage, res: ServerResponse) {
  const path = new URL(req.url ?? "/", "http://127.0.0.1").pathname;
  const fault = context.faults.take(path);
  if (fault !== null) {
    req.resume();
    return send(res, fault.status, fault.body, fault.type);
  }
  const route = findRoute(context, routes, path);
  if (route === undefined) throw new RequestError(404, "NotFound", `No route for ${path}`);
  if (!route.methods.includes(req.method ?? "")) {
    res.setHeader("Allow", route.methods.join(", "));
    throw new RequestError(405, "MethodNotAllowed", `${req.method} is not allowed on ${path}`);
  }
  await route.handle(req, res, path);
}

function findRoute(context: Context, routes: ReadonlyMap<string, Route>, path: string): Route | undefined {
  if (path.startsWith(RUN_PREFIX)) {
    return { methods: POST, handle: (req, res) => callFunction(context, req, res, { kind: "any", pathFromUrl: true }, path) };
  }
  if (path.startsWith(TABLES_PREFIX)) return tablesRoute(context.backend, path.slice(TABLES_PREFIX.length));
  return routes.get(path);
}

/** The routes at fixed paths. */
function routeTable(context: Context, name: string): ReadonlyMap<string, Route> {
  const { backend, faults } = context;
  const serverVersion = `convex-local (convex ${convexVersion})`;
  const text = (body: string): Route => ({ methods: GET, handle: (_, res) => send(res, 200, body, TEXT) });
  const json = (methods: readonly string[], answer: () => unknown): Route => ({
    methods,
    handle: (_, res) => send(res, 200, JSON.stringify(answer())),
  });
  return new Map<string, Route>([
    ["/", text("This Convex deployment is running. See https://docs.convex.dev/.")],
    ["/version", text(serverVersion)],
    ["/instance_version", text(serverVersion)],
    ["/instance_name", text(name)],
    ["/echo", { methods: POST, handle: echo }],
    ["/api/query_ts", json(POST, () => ({ ts: encodeTs(backend.latestTimestamp()) }))],
    ["/_dev/stats", json(GET, () => backend.report())],
    [
      "/_dev/stats/reset",
      json(POST, () => {
        backend.resetStats();
        return backend.report();
      }),
    ],
    ["/_dev/faults", faultRoute(faults)],
    ...Object.entries(FUNCTION_ENDPOINTS).map(([url, endpoint]): [string, Route] => [
      url,
      { methods: POST, handle: (req, res) => callFunction(context, req, res, endpoint, url) },
    ]),
  ]);
}

/** A function call: 200 `{"status":"success","value"}` or `{"status":"error",...}` (logged). */
async function callFunction(
  { backend, style, log }: Context,
  req: IncomingMessage,
  res: ServerResponse,
  endpoint: FunctionEndpoint,
  url: string,
) {
  const body = await readJsonBody(req);
  const path = endpoint.pathFromUrl ? pathFromRunUrl(url.slice(RUN_PREFIX.length)) : body.path;
  if (typeof path !== "string") throw badJsonBody("missing field `path` (a string)");
  if (!("args" in body)) throw badJsonBody("missing field `args`");
  const format = formatOf(body.format);
  if (endpoint.atTs) checkTs(body.ts);
  const requestId = requestIdFor(req.headers["convex-request-id"]);
  const exportValue = (v: Value) => (format === "json" ? exportClean(v) : convexToJson(v));
  const result = await backend.call(endpoint.kind, path, body.args);
  if (result.ok) return send(res, 200, floatJson({ status: "success", value: exportValue(result.value) }));
  log(deploymentLogLine({ ...result, requestId }));
  const { failure } = result;
  if (failure.system !== undefined) return sendError(res, new RequestError(failure.system.status, failure.system.code, failure.system.message));
  const errorData = failure.data === undefined ? undefined : exportValue(failure.data);
  send(res, 200, floatJson({ status: "error", errorMessage: errorMessage(requestId, failure, style), errorData }));
}

/** `POST /echo`: the body back, up to `MAX_ECHO_BYTES` (what `npx convex network-test` sends). */
async function echo(req: IncomingMessage, res: ServerResponse): Promise<void> {
  if (Number(req.headers["content-length"] ?? 0) > MAX_ECHO_BYTES) {
    req.resume();
    return send(res, 413, "length limit exceeded", TEXT);
  }
  let size = 0;
  const bounded = new Transform({
    transform(chunk: Buffer, _encoding, done) {
      size += chunk.length;
      done(size > MAX_ECHO_BYTES ? new Error("length limit exceeded") : null, chunk);
    },
  });
  res.writeHead(200);
  await pipeline(req, bounded, res);
}

/** `GET /_dev/faults` shows the fault, `POST` sets one (see faults.ts), `DELETE` clears it. */
function faultRoute(faults: FaultInjector): Route {
  return {
    methods: ["GET", "POST", "DELETE"],
    handle: async (req, res) => {
      if (req.method === "POST") faults.set(await readJsonBody(req));
      if (req.method === "DELETE") faults.clear();
      send(res, 200, JSON.stringify({ fault: faults.current }));
    },
  };
}

/** `GET /_dev/tables/<table>`: every document of a table of the schema, as clean JSON. */
function tablesRoute(backend: Backend, encoded: string): Route {
  return {
    methods: GET,
    handle: async (_, res) => {
      const docs = await backend.documents(decodePath(encoded));
      send(res, 200, floatJson(docs.map(exportClean)));
    },
  };
}

// ------------------------------------------------------------------ running it

/** Starts the stand-in on 127.0.0.1:port (0 picks a free port). */
export async function startServer(port: number, options: ConvexLocalOptions = {}): Promise<ConvexLocal & { url: string }> {
  const local = createConvexLocal(options);
  await new Promise<void>((resolve, reject) => {
    local.server.once("error", reject);
    local.server.listen(port, "127.0.0.1", resolve);
  });
  const url = `http://127.0.0.1:${(local.server.address() as AddressInfo).port}`;
  return { ...local, url };
}

function fail(message: string): never {
  console.error(`convex-local: ${message}`);
  process.exit(2);
}

/**
 * The options the environment gives: CONVEX_LOCAL_ERRORS (prod|dev), CONVEX_LOCAL_NAME,
 * CONVEX_LOCAL_OCC (on|off) and CONVEX_LOCAL_FUNCTIONS (repo|test: test serves
 * testFunctions.ts instead of ../../convex).
 */
async function optionsFromEnv(env: NodeJS.ProcessEnv): Promise<ConvexLocalOptions> {
  const errors = env.CONVEX_LOCAL_ERRORS || "prod";
  if (!(ERROR_STYLES as readonly string[]).includes(errors)) {
    fail(`CONVEX_LOCAL_ERRORS must be one of ${ERROR_STYLES.join(", ")}, got ${errors}`);
  }
  const occ = env.CONVEX_LOCAL_OCC || "on";
  if (occ !== "on" && occ !== "off") fail(`CONVEX_LOCAL_OCC must be one of on, off, got ${occ}`);
  const functions = env.CONVEX_LOCAL_FUNCTIONS || "repo";
  if (functions !== "repo" && functions !== "test") fail(`CONVEX_LOCAL_FUNCTIONS must be repo or test, got ${functions}`);
  const served: ConvexLocalOptions = {};
  if (functions === "test") {
    const { notes, tallies, testSchema } = await import("./testFunctions.js");
    Object.assign(served, { functions: { notes, tallies }, schema: testSchema });
  }
  return { ...served, errors: errors as ErrorStyle, name: env.CONVEX_LOCAL_NAME || undefined, occ: { enabled: occ === "on" } };
}

async function main() {
  const port = Number(process.env.PORT ?? 3210);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`PORT must be 0..65535, got ${process.env.PORT}`);
  const options = await optionsFromEnv(process.env);
  if (!process.env.HEALTH_SIDECAR_SECRET) {
    console.error("convex-local: HEALTH_SIDECAR_SECRET is not set: every signed health function will answer unauthorized");
  }
  const { server, sync, url } = await startServer(port, options);
  console.log(`convex-local listening on ${url}`);
  const stop = () => {
    sync.closeAll();
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
