/**
 * Fidelity of the stand-in, checked with Convex's own ConvexHttpClient and raw HTTP: the repo's
 * functions through `server.ts` started as `npm start` would (tsx, a free port), in production
 * and development error styles; byte accounting against hand-computed numbers with the test-only
 * functions of testFunctions.ts, in process.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { createHmac, randomBytes } from "node:crypto";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { ConvexHttpClient } from "convex/browser";
import { makeFunctionReference } from "convex/server";
import { ConvexError } from "convex/values";
import { afterAll, beforeAll, beforeEach, describe, expect, test, vi } from "vitest";
import { api } from "../../convex/_generated/api";
import { startServer, type ConvexLocal } from "./server";
import { notes, testSchema } from "./testFunctions";
import type { FunctionStats } from "./usage";
import { MAX_API_BODY_BYTES } from "./wire";

const SECRET = "server-test-secret";
const OUTPUT = 'took 12 ms, "n":3 {1}';
const REDACTED = /^\[Request ID: [0-9a-f]{16}\] Server Error$/;
const HERE = fileURLToPath(new URL(".", import.meta.url));

// ---------------------------------------------------------------- helpers

interface Spawned {
  child: ChildProcess;
  url: string;
  lines: string[];
}

/** `server.ts` as `npm start` runs it, on a free port; resolves once its first line is out. */
function spawnServer(env: Record<string, string> = {}): Promise<Spawned> {
  const child = spawn(process.execPath, ["--import", "tsx", "server.ts"], {
    cwd: HERE,
    env: { ...process.env, PORT: "0", HEALTH_SIDECAR_SECRET: SECRET, ...env },
    stdio: ["ignore", "pipe", "inherit"],
  });
  const lines: string[] = [];
  return new Promise((resolve, reject) => {
    let partial = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      const parts = (partial + chunk.toString()).split("\n");
      partial = parts.pop()!;
      lines.push(...parts);
      const match = /^convex-local listening on (http:\/\/127\.0\.0\.1:\d+)$/.exec(lines[0] ?? "");
      if (match) resolve({ child, url: match[1], lines });
    });
    child.once("exit", (code) => reject(new Error(`server exited early with ${code}: ${lines.join("\n")}`)));
  });
}

/** A deployment log line (a log stream's `function_execution` event). */
interface LogLine {
  topic: string;
  status: string;
  function: { type?: string; path: string; request_id: string };
  error_message: string;
}

/** The deployment log line of the request `requestId`, waiting briefly for it to arrive. */
async function logLine(server: Spawned, requestId: string): Promise<LogLine> {
  for (let i = 0; i < 100; i++) {
    const line = server.lines.find((l) => l.includes(`"request_id":"${requestId}"`));
    if (line !== undefined) return JSON.parse(line);
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`no deployment log line for ${requestId}:\n${server.lines.join("\n")}`);
}

function post(url: string, body: unknown, headers: Record<string, string> = {}) {
  return fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json", ...headers },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

// As a sidecar signs: each call's ts newer than the last (Convex refuses a replayed ts), and a
// steady sync (with a heartbeat) presents the token its instance's hello answered (`keep`).
let lastTs = 0;
const tokens = new Map<string, string>();
function keep<A extends { token: string | null }>(instance: string, answer: A): A {
  if (answer.token !== null) tokens.set(instance, answer.token);
  return answer;
}

function signed(instance: string, payload: object, secret = SECRET) {
  const content = "heartbeat" in payload && !("token" in payload) ? { ...payload, token: tokens.get(instance) ?? null } : payload;
  const body = JSON.stringify(content);
  const ts = Math.max(Date.now(), lastTs + 1);
  lastTs = ts;
  const message = `health-sidecar/1\nhealth:sync\n${instance}\n${ts}\n${body}`;
  const sig = createHmac("sha256", Buffer.from(secret, "utf8")).update(message, "utf8").digest("hex");
  return { instance, ts, sig, body };
}

const result = (check: string) => ({
  check,
  fingerprint: "3f2a9c0d1e2b4a5c",
  status: "pass",
  ageMs: 1234,
  latencyMs: 12.5,
  output: OUTPUT,
  consecutiveFailures: 0,
  consecutiveSuccesses: 7,
  lastSuccessAgeMs: null,
});
const payload = (extra: object = {}) => ({ version: "0.1.0", ttlMs: 300_000, results: [], ...extra });

function stop(child: ChildProcess) {
  if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL");
}

const usage = (stats: Partial<FunctionStats>): FunctionStats => ({
  calls: 1,
  errors: 0,
  documentsRead: 0,
  bytesRead: 0,
  documentsWritten: 0,
  bytesWritten: 0,
  ...stats,
});

// ---------------------------------------------------- the repo's functions, prod style

let prod: Spawned;
let client: ConvexHttpClient;

beforeAll(async () => {
  prod = await spawnServer();
  client = new ConvexHttpClient(prod.url, { skipConvexDeploymentUrlCheck: true });
}, 30_000);

afterAll(() => stop(prod.child));

describe("with the official ConvexHttpClient (production-style errors)", () => {
  test("a signed sync stores its result with every field intact; ping answers null", async () => {
    const answer = await client.mutation(
      api.health.sync,
      signed("web-1", payload({ hello: { convex: "3f2a9c0d1e2b4a5c" }, results: [result("convex")] })),
    );
    expect(answer).toMatchObject({ written: 1, resend: false, warm: null });
    expect(answer.expiresAt - answer.now).toBe(300_000);
    expect(await client.query(api.health.ping, {})).toBeNull();

    const rows = await (await fetch(`${prod.url}/_dev/tables/sidecarResults`)).json();
    expect(rows).toEqual([
      expect.objectContaining({ instance: "web-1", check: "convex", output: OUTPUT, latencyMs: 12.5, lastSuccessAt: null }),
    ]);
  });

  test("a ConvexError keeps its data (code unauthorized); its message is only Server Error", async () => {
    const error = await client.mutation(api.health.sync, signed("web-1", payload(), "wrong")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConvexError);
    expect((error as ConvexError<{ code: string }>).data).toMatchObject({ code: "unauthorized" });
    expect((error as Error).message).toMatch(REDACTED);
  });

  test("an argument-validation failure is a plain Server Error; the deployment log quotes the arguments", async () => {
    const args = { ...signed("web-1", payload()), extra: 1 };
    const error = await client.mutation(api.health.sync, args as never).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Error);
    expect(error).not.toBeInstanceOf(ConvexError);
    expect((error as Error).message).toMatch(REDACTED);

    const requestId = /Request ID: (\w+)/.exec((error as Error).message)![1];
    const line = await logLine(prod, requestId);
    expect(line).toMatchObject({ topic: "function_execution", status: "failure", function: { type: "mutation", path: "health:sync" } });
    expect(line.error_message).toMatch(/^ArgumentValidationError: .*extra/);
    const quoted = /\n\nObject: (.*)$/.exec(line.error_message)![1];
    expect(JSON.parse(quoted)).toEqual(args);
  });

  test("consistentQuery (POST /api/query_ts, then /api/query_at_ts) answers", async () => {
    expect(await client.consistentQuery(api.health.ping, {})).toBeNull();
  });

  test("concurrent syncs are serialized: 20 first syncs of one instance leave one document", async () => {
    const calls = Array.from({ length: 20 }, () =>
      client.mutation(api.health.sync, signed("web-2", payload({ hello: {} })), { skipQueue: true }),
    );
    // Each is accepted, or refused as a replay when one with a newer ts committed before it.
    const settled = await Promise.allSettled(calls);
    expect(settled.filter((s) => s.status === "fulfilled").length).toBeGreaterThan(0);
    for (const s of settled) {
      if (s.status === "rejected") expect((s.reason as ConvexError<{ code: string }>).data.code).toBe("replayed");
    }
    const instances = await (await fetch(`${prod.url}/_dev/tables/sidecarInstances`)).json();
    expect(instances.filter((d: { instance: string }) => d.instance === "web-2")).toHaveLength(1);
  });
});

describe("raw HTTP", () => {
  test("numbers are written as floats, strings are untouched", async () => {
    const response = await post(`${prod.url}/api/mutation`, {
      path: "health:sync",
      args: signed("web-3", payload({ hello: {}, results: [result("app")] })),
      format: "json",
    });
    const text = await response.text();
    expect(response.status).toBe(200);
    expect(text).toMatch(/"written":1\.0[,}]/);
    expect(text).toMatch(/"now":\d+\.0[,}]/);
    expect(JSON.parse(text).status).toBe("success");
    const rows = await (await fetch(`${prod.url}/_dev/tables/sidecarResults`)).text();
    expect(rows).toMatch(/"consecutiveSuccesses":7\.0[,}]/);
    expect(rows).toContain(`"output":${JSON.stringify(OUTPUT)}`);
  });

  test("/api/run/<module>/<function> takes the path from the URL", async () => {
    const response = await post(`${prod.url}/api/run/health/ping`, { args: {}, format: "json" });
    expect(await response.json()).toEqual({ status: "success", value: null });
  });

  test("args may be an object or a one-element list", async () => {
    for (const args of [{}, [{}]]) {
      expect(await (await post(`${prod.url}/api/query`, { path: "health:ping", args })).json()).toEqual({
        status: "success",
        value: null,
      });
    }
  });

  test.each([
    ["an unknown function", "/api/query", { path: "health:nope", args: {} }, /^Could not find public function for 'health:nope'\.$/],
    ["an internal function", "/api/mutation", { path: "health:purgeExpired", args: {} }, /^Could not find public function/],
    ["a mutation on /api/query", "/api/query", { path: "health:sync", args: {} }, /as Query, but it is defined as Mutation/],
    ["a query on /api/action", "/api/action", { path: "health:ping", args: {} }, /as Action, but it is defined as Query/],
    ["args that are not an object", "/api/query", { path: "health:ping", args: "x" }, /^ArgumentValidationError: /],
    ["an unexpected argument", "/api/query", { path: "health:ping", args: { x: 1 } }, /^ArgumentValidationError: [\s\S]*Object: {"x":1}$/],
    ["two positional args", "/api/query", { path: "health:ping", args: [{}, {}] }, /^Invalid arguments/],
    ["args with a reserved $ key", "/api/query", { path: "health:ping", args: { $bad: 1 } }, /^Invalid arguments/],
  ])("%s is a redacted function error (HTTP 200), detailed in the deployment log", async (name, endpoint, body, detail) => {
    const requestId = `t${randomBytes(6).toString("hex")}`;
    const response = await post(prod.url + endpoint, body, { "convex-request-id": requestId });
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ status: "error", errorMessage: `[Request ID: ${requestId}] Server Error` });
    expect((await logLine(prod, requestId)).error_message).toMatch(detail);
  });

  test.each([
    ["bad JSON", "/api/query", "{nope", "BadJsonBody"],
    ["a JSON body that is not an object", "/api/query", "[1]", "BadJsonBody"],
    ["a missing path", "/api/query", { args: {} }, "BadJsonBody"],
    ["missing args", "/api/query", { path: "health:ping" }, "BadJsonBody"],
    ["a malformed path", "/api/mutation", { path: "health:sy nc", args: {} }, "BadConvexFunctionIdentifier"],
    ["an unknown format", "/api/query", { path: "health:ping", args: {}, format: "xml" }, "BadFormat"],
    ["a format named like an Object method", "/api/query", { path: "health:ping", args: {}, format: "toString" }, "BadFormat"],
    ["/api/run without a function", "/api/run/health", { args: {} }, "MissingIdentifier"],
    ["/api/query_at_ts without ts", "/api/query_at_ts", { path: "health:ping", args: {} }, "BadJsonBody"],
  ])("%s is a 400 request error", async (_, endpoint, body, code) => {
    const response = await post(prod.url + endpoint, body);
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ code, message: expect.any(String) });
  });

  test("a body that is not declared as JSON is a 400", async () => {
    const response = await post(`${prod.url}/api/query`, '{"path":"health:ping","args":{}}', { "Content-Type": "text/plain" });
    expect(response.status).toBe(400);
    expect(await response.json()).toEqual({ code: "BadJsonBody", message: "Expected request with `Content-Type: application/json`" });
  });

  test("a body over 16 MiB + 2,000 bytes is a 400 BadJsonBody; one at the limit is served", async () => {
    const call = '{"path":"health:ping","args":{}}';
    const atLimit = call + " ".repeat(MAX_API_BODY_BYTES - call.length);
    const ok = await post(`${prod.url}/api/query`, atLimit);
    expect(await ok.json()).toEqual({ status: "success", value: null });

    const over = await post(`${prod.url}/api/query`, atLimit + " ");
    expect(over.status).toBe(400);
    expect(await over.json()).toEqual({ code: "BadJsonBody", message: "Failed to buffer the request body: length limit exceeded" });
    expect((await fetch(`${prod.url}/version`)).status).toBe(200);
  });

  test("POST /api/query_ts answers a base64 u64; /api/query_at_ts refuses a malformed ts with 500", async () => {
    const { ts } = await (await fetch(`${prod.url}/api/query_ts`, { method: "POST" })).json();
    expect(Buffer.from(ts, "base64")).toHaveLength(8);
    const at = await post(`${prod.url}/api/query_at_ts`, { path: "health:ping", args: [{}], ts, format: "convex_encoded_json" });
    expect(await at.json()).toEqual({ status: "success", value: null });
    const bad = await post(`${prod.url}/api/query_at_ts`, { path: "health:ping", args: {}, ts: "nope" });
    expect(bad.status).toBe(500);
    expect(await bad.json()).toEqual({ code: "InternalServerError", message: "Your request couldn't be completed. Try again later." });
  });

  test("GET /, /version, /instance_version, /instance_name answer 200 text; HEAD too; others 404/405", async () => {
    const root = await fetch(`${prod.url}/`);
    expect(await root.text()).toBe("This Convex deployment is running. See https://docs.convex.dev/.");
    expect(await (await fetch(`${prod.url}/instance_name`)).text()).toBe("convex-local");
    for (const path of ["/version", "/instance_version", "/instance_name"]) {
      const response = await fetch(prod.url + path);
      expect(response.status).toBe(200);
      expect(response.headers.get("content-type")).toMatch(/^text\/plain/);
      expect((await response.text()).length).toBeGreaterThan(0);
      expect((await fetch(prod.url + path, { method: "HEAD" })).status).toBe(200);
    }
    expect((await fetch(`${prod.url}/nope`)).status).toBe(404);
    expect((await fetch(`${prod.url}/api/query`)).status).toBe(405);
    expect((await post(`${prod.url}/version`, {})).status).toBe(405);
    expect((await fetch(`${prod.url}/echo`)).status).toBe(405);
  });

  test("POST /echo answers the body it got (128 B and 4 MiB, as npx convex network-test sends)", async () => {
    for (const size of [128, 4 * 1024 * 1024]) {
      const body = randomBytes(size);
      const response = await fetch(`${prod.url}/echo`, { method: "POST", body });
      expect(response.status).toBe(200);
      expect(Buffer.from(await response.arrayBuffer()).equals(body)).toBe(true);
    }
  });

  test("GET /_dev/tables of a table not in the schema is a 404", async () => {
    expect((await fetch(`${prod.url}/_dev/tables/nope`)).status).toBe(404);
  });

  test("survives odd bodies and keeps serving", async () => {
    const bodies = ["", "null", '"str"', "1e999", '{"path":5,"args":{}}', '{"path":"health:ping","args":null}', "[".repeat(10_000)];
    for (const body of bodies) {
      const response = await post(`${prod.url}/api/query`, body);
      expect(response.status).toBeLessThan(500);
      await response.arrayBuffer();
    }
    expect((await fetch(`${prod.url}/version`)).status).toBe(200);
  });
});

// ------------------------------------------------------------------ faults

describe("fault injection (POST/DELETE /_dev/faults)", () => {
  const setFault = async (fault: object) => {
    const response = await post(`${prod.url}/_dev/faults`, fault);
    expect(response.status).toBe(200);
    return (await response.json()).fault;
  };
  const ping = () => post(`${prod.url}/api/query`, { path: "health:ping", args: {} });
  const callsOfPing = async () => (await (await fetch(`${prod.url}/_dev/stats`)).json()).functions["health:ping"]?.calls ?? 0;

  beforeEach(async () => {
    await fetch(`${prod.url}/_dev/faults`, { method: "DELETE" });
  });

  test("a fault on given paths answers N times, spares other paths, then clears itself", async () => {
    await setFault({ status: 429, times: 2, paths: ["/api/mutation"] });
    const calls = await callsOfPing();
    for (let i = 0; i < 2; i++) {
      const response = await post(`${prod.url}/api/mutation`, { path: "health:sync", args: {} });
      expect(response.status).toBe(429);
      expect(await response.json()).toEqual({
        code: "TooManyConcurrentRequests",
        message:
          "Too many concurrent requests. Your backend is limited to 16 concurrent mutations. To get more resources, upgrade to Convex Pro. If you are already on Convex Pro, please contact support.",
      });
      expect((await ping()).status).toBe(200);
    }
    expect(await (await fetch(`${prod.url}/_dev/faults`)).json()).toEqual({ fault: null });
    expect((await post(`${prod.url}/api/mutation`, { path: "health:sync", args: {} })).status).toBe(200);
    expect(await callsOfPing()).toBe(calls + 2); // the refused calls never ran
  });

  test("without paths it applies to every /api/ route until cleared, never to public or /_dev/ routes", async () => {
    await setFault({ status: 503 });
    for (const path of ["/api/query", "/api/query_ts", "/api/run/health/ping"]) {
      const response = await post(prod.url + path, { path: "health:ping", args: {} });
      expect(response.status).toBe(503);
      expect((await response.json()).code).toBe("OptimisticConcurrencyControlFailure");
    }
    expect((await fetch(`${prod.url}/instance_name`)).status).toBe(200);
    expect((await fetch(`${prod.url}/_dev/stats`)).status).toBe(200);
    expect((await fetch(`${prod.url}/_dev/faults`, { method: "DELETE" })).status).toBe(200);
    expect((await ping()).status).toBe(200);
  });

  test.each([
    [{ status: 500 }, 500, { code: "InternalServerError", message: "Your request couldn't be completed. Try again later." }],
    [{ status: 503, code: "ExpiredInQueue" }, 503, { code: "ExpiredInQueue", message: expect.stringMatching(/^Too many concurrent requests in a short period/) }],
    [{ status: 503, code: "WorkerOverloaded" }, 503, { code: "WorkerOverloaded", message: "There are no available workers to process the request" }],
  ])("%j answers %i with Convex's code and message", async (fault, status, body) => {
    await setFault({ ...fault, times: 1 });
    const response = await ping();
    expect(response.status).toBe(status);
    expect(await response.json()).toEqual(body);
  });

  test("413 stands for a proxy in front: plain text, not Convex's JSON", async () => {
    await setFault({ status: 413, times: 1, paths: ["/api/query"] });
    const response = await ping();
    expect(response.status).toBe(413);
    expect(response.headers.get("content-type")).toMatch(/^text\/plain/);
    expect(await response.text()).toBe("Payload Too Large");
  });

  test("the official client sees a faulted call as a thrown error with the body", async () => {
    await setFault({ status: 503, times: 1 });
    await expect(client.query(api.health.ping, {})).rejects.toThrow(/OptimisticConcurrencyControlFailure/);
    expect(await client.query(api.health.ping, {})).toBeNull();
  });

  test.each([[{ status: 404 }], [{ status: 429, code: "WorkerOverloaded" }], [{ status: 500, times: 0 }], [{ status: 500, paths: ["api"] }], [{ status: 500, paths: [] }]])(
    "a bad fault %j is a 400",
    async (fault) => {
      const response = await post(`${prod.url}/_dev/faults`, fault);
      expect(response.status).toBe(400);
      expect((await response.json()).code).toBe("BadFault");
    },
  );
});

// ------------------------------------------------------------------ dev style

describe("development-style errors (CONVEX_LOCAL_ERRORS=dev)", () => {
  let dev: Spawned;
  let devClient: ConvexHttpClient;

  beforeAll(async () => {
    dev = await spawnServer({ CONVEX_LOCAL_ERRORS: "dev", CONVEX_LOCAL_NAME: "happy-animal-123" });
    devClient = new ConvexHttpClient(dev.url, { skipConvexDeploymentUrlCheck: true });
  }, 30_000);

  afterAll(() => stop(dev.child));

  test("an argument-validation error shows its detail and the arguments", async () => {
    const error = await devClient.query(api.health.ping, { x: 1 } as never).catch((e: unknown) => e);
    expect(error).not.toBeInstanceOf(ConvexError);
    expect((error as Error).message).toMatch(/^\[Request ID: [0-9a-f]{16}\] Server Error\nArgumentValidationError: .*`x`[\s\S]*\n\nObject: \{"x":1\}$/);
  });

  test("a ConvexError shows 'Uncaught ConvexError' and keeps its data", async () => {
    const error = await devClient.mutation(api.health.sync, signed("dev-1", payload(), "wrong")).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConvexError);
    expect((error as ConvexError<{ code: string }>).data.code).toBe("unauthorized");
    expect((error as Error).message).toMatch(/^\[Request ID: [0-9a-f]{16}\] Server Error\nUncaught ConvexError: .*unauthorized/);
  });

  test("CONVEX_LOCAL_NAME is what /instance_name answers", async () => {
    expect(await (await fetch(`${dev.url}/instance_name`)).text()).toBe("happy-animal-123");
  });

  test("an unknown CONVEX_LOCAL_ERRORS exits 2", async () => {
    const child = spawn(process.execPath, ["--import", "tsx", "server.ts"], {
      cwd: HERE,
      env: { ...process.env, PORT: "0", CONVEX_LOCAL_ERRORS: "loud" },
      stdio: "ignore",
    });
    const [code] = await once(child, "exit");
    expect(code).toBe(2);
  });
});

// ------------------------------------------------- usage stats, in process

describe("usage stats: database bandwidth as Convex bills it (test functions, in process)", () => {
  // A note {author: "alice", body: "hello"} is 89 bytes: 2 (object) + 38 (_id: 4 + 2 + 32)
  // + 23 (_creationTime: 14 + 9) + 14 (author: 7 + 2 + 5) + 12 (body: 5 + 2 + 5).
  // Written, it adds one by_author index entry: 76 + 7 ("alice") = 83 bytes.
  // Read through by_author, it adds its index key: 7 ("alice") + 9 + 34 = 50 bytes.
  // With body "bye" it is 87 bytes.
  const NOTE = 89;
  const NOTE_BYE = 87;
  const ENTRY = 83;
  const KEY = 50;

  let local: ConvexLocal & { url: string };
  let notesClient: ConvexHttpClient;
  const lines: string[] = [];
  const ref = <K extends "query" | "mutation">(kind: K, name: string) => makeFunctionReference<K>(`notes:${name}`);

  beforeAll(async () => {
    local = await startServer(0, { functions: { notes }, schema: testSchema, log: (line) => lines.push(line) });
    notesClient = new ConvexHttpClient(local.url, { skipConvexDeploymentUrlCheck: true });
  });

  afterAll(() => local.server.close());

  beforeEach(async () => {
    expect((await post(`${local.url}/_dev/stats/reset`, "")).status).toBe(200);
  });

  const stats = async () => (await (await fetch(`${local.url}/_dev/stats`)).json()).functions;

  test("insert, index read, get, scan, patch, delete: each counted exactly", async () => {
    const id = await notesClient.mutation(ref("mutation", "add"), { author: "alice", body: "hello" });
    expect(await notesClient.query(ref("query", "byAuthor"), { author: "alice" })).toHaveLength(1);
    await notesClient.query(ref("query", "get"), { id });
    await notesClient.query(ref("query", "scan"), {});
    await notesClient.mutation(ref("mutation", "rewrite"), { id, body: "bye" });
    await notesClient.mutation(ref("mutation", "remove"), { id });

    expect(await stats()).toEqual({
      "notes:add": usage({ documentsWritten: 1, bytesWritten: NOTE + ENTRY }),
      "notes:byAuthor": usage({ documentsRead: 1, bytesRead: NOTE + KEY }),
      "notes:get": usage({ documentsRead: 1, bytesRead: NOTE }),
      "notes:scan": usage({ documentsRead: 1, bytesRead: NOTE }),
      "notes:rewrite": usage({ documentsRead: 1, bytesRead: NOTE, documentsWritten: 1, bytesWritten: NOTE_BYE + ENTRY }),
      "notes:remove": usage({ documentsRead: 1, bytesRead: NOTE_BYE, documentsWritten: 1, bytesWritten: 0 }),
    });
    expect(local.stats().functions).toEqual(await stats());
  });

  test("a document inserted then patched in one mutation is written (and billed) once", async () => {
    await notesClient.mutation(ref("mutation", "addAndRewrite"), { author: "alice", body: "hello", rewritten: "bye" });
    expect((await stats())["notes:addAndRewrite"]).toEqual(
      usage({ documentsRead: 1, bytesRead: NOTE, documentsWritten: 1, bytesWritten: NOTE_BYE + ENTRY }),
    );
  });

  test("a failed call counts as a call and an error; its writes never happened", async () => {
    await expect(notesClient.mutation(ref("mutation", "addThenFail"), { author: "zed", body: "hello" })).rejects.toThrow(REDACTED);
    await expect(notesClient.mutation(ref("mutation", "refuse"), {})).rejects.toThrow(ConvexError);
    expect(await stats()).toEqual({
      "notes:addThenFail": usage({ errors: 1 }),
      "notes:refuse": usage({ errors: 1 }),
    });
    expect(await notesClient.query(ref("query", "byAuthor"), { author: "zed" })).toEqual([]);
  });

  test("POST /_dev/stats/reset starts from zero", async () => {
    await notesClient.query(ref("query", "scan"), {});
    expect(Object.keys(await stats())).toEqual(["notes:scan"]);
    await post(`${local.url}/_dev/stats/reset`, "");
    expect(await stats()).toEqual({});
    local.resetStats();
    expect(local.stats().functions).toEqual({});
  });

  test("convex-test's own transaction metrics see only the function's reads", async () => {
    const id = await notesClient.mutation(ref("mutation", "add"), { author: "bob", body: "hello" });
    const metrics = await notesClient.mutation(ref("mutation", "rewriteAndMeasure"), { id, body: "bye" });
    expect(metrics).toMatchObject({
      documentsRead: { used: 2 },
      databaseQueries: { used: 1 },
      documentsWritten: { used: 1 },
    });
  });

  test("transaction limits are Convex cloud's: writing over 8 MiB fails with the backend's text, as Server Error, logged in full", async () => {
    const error = await notesClient.mutation(ref("mutation", "writeTooMuch"), {}).catch((e: unknown) => e);
    expect((error as Error).message).toMatch(REDACTED);
    const requestId = /Request ID: (\w+)/.exec((error as Error).message)![1];
    const line = JSON.parse(lines.find((l) => l.includes(requestId))!) as LogLine;
    expect(line.error_message).toBe("Uncaught Error: Too many bytes written in a single function execution (limit: 8 MiB)");
    expect(await notesClient.query(ref("query", "byAuthor"), { author: "big" })).toEqual([]);
  });

  test("a plain error is only Server Error in prod style and 'Uncaught Error: boom' in dev style", async () => {
    const devLocal = await startServer(0, { functions: { notes }, schema: testSchema, errors: "dev", log: () => {} });
    try {
      const devNotes = new ConvexHttpClient(devLocal.url, { skipConvexDeploymentUrlCheck: true });
      const args = { author: "a", body: "b" };
      await expect(notesClient.mutation(ref("mutation", "addThenFail"), args)).rejects.toThrow(REDACTED);
      await expect(devNotes.mutation(ref("mutation", "addThenFail"), args)).rejects.toThrow(
        /^\[Request ID: [0-9a-f]{16}\] Server Error\nUncaught Error: boom$/,
      );
    } finally {
      devLocal.server.close();
    }
  });
});

describe("usage stats of the store protocol (the repo's functions, in process)", () => {
  test("a hello registers the instance and its heartbeat; a steady-state sync gets and patches the heartbeat and reads the live count", async () => {
    process.env.HEALTH_SIDECAR_SECRET = SECRET;
    const local = await startServer(0, { log: () => {} });
    try {
      const store = new ConvexHttpClient(local.url, { skipConvexDeploymentUrlCheck: true });
      const sync = () => local.stats().functions["health:sync"];
      const first = keep("stats-1", await store.mutation(api.health.sync, signed("stats-1", payload({ hello: {} }))));
      // Nothing to read: the registry, the join bucket, the mailbox, the counter shard and the
      // recount mark find nothing. Written: the registry {instance: "stats-1", version: "0.1.0",
      // heartbeat}: 63 + 18 + 15 + 44 = 140 bytes, with its by_instance (76 + 9) and by_heartbeat
      // (76 + 34) entries: 335; the heartbeat (149, by_liveUntil entry 85); the join bucket
      // {minute, shard, count} (109, by_minute_shard entry 94); the mailbox, the "live" counter
      // shard and the recount mark: six documents, once per start.
      expect(sync()).toMatchObject({ documentsRead: 0, documentsWritten: 6 });
      expect(sync().bytesWritten).toBeGreaterThan(335 + 149 + 85 + 109 + 94);

      // The steady state, whatever the instance's name (here 7 and 64 characters): the heartbeat
      // {seenAt, expiresAt, liveUntil, ts, tokenHash (8 bytes)}: 63 + 16 + 19 + 19 + 12 + 20 = 149
      // bytes, read by id (no index key), read again by the patch and written with its
      // by_liveUntil entry (76 + 9), and the live count (77 bytes: the hellos' recount ran at
      // once): 375 bytes read, 234 written, 609 bytes a sync.
      const pod = `web-${"7c9f8d6b5".repeat(6)}-x4k2p`;
      expect(pod).toHaveLength(64);
      const second = keep(pod, await store.mutation(api.health.sync, signed(pod, payload({ hello: {} }))));
      for (const [instance, heartbeat] of [
        ["stats-1", first.heartbeat],
        [pod, second.heartbeat],
      ]) {
        local.resetStats();
        const answer = await store.mutation(api.health.sync, signed(instance, payload({ heartbeat })));
        expect(answer).toMatchObject({ heartbeat, resend: false });
        expect(sync()).toEqual(
          usage({ documentsRead: 3, bytesRead: 149 + 149 + 77, documentsWritten: 1, bytesWritten: 149 + 85 }),
        );
      }
    } finally {
      local.server.close();
    }
  });
});

describe("usage stats of the fleet additions (the repo's functions, in process, the clock faked)", () => {
  // Sizes, as Convex bills them (dev/convex-local/bandwidth.ts; README "Usage stats"): the
  // heartbeat 149 bytes (see above), written with its by_liveUntil entry (76 + 9).
  const BEAT = 149;
  const BEAT_WRITE = BEAT + 85;

  let local: ConvexLocal & { url: string };
  let store: ConvexHttpClient;
  const sync = () => local.stats().functions["health:sync"];
  const beats: Record<string, string> = {};
  const send = (instance: string, extra: object) =>
    store.mutation(api.health.sync, signed(instance, payload({ heartbeat: beats[instance], ...extra })));
  const panic = (instance: string, failing: string[]) => send(instance, { panic: { failing, holdMs: 25_000 } });
  const shared = (instance: string, probed: boolean) =>
    send(instance, {
      shared: [{ check: "agent", fingerprint: "3f2a9c0d1e2b4a5c", leaseMs: 30_000, result: probed ? result("agent") : null }],
    });
  /** Usage of one call of health:sync. */
  async function measured(call: () => Promise<unknown>): Promise<FunctionStats> {
    local.resetStats();
    await call();
    return sync();
  }
  async function hello(instance: string) {
    const answer = await store.mutation(api.health.sync, signed(instance, payload({ hello: {} })));
    beats[instance] = keep(instance, answer).heartbeat;
  }

  beforeAll(async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(1_800_000_000_000);
    process.env.HEALTH_SIDECAR_SECRET = SECRET;
    local = await startServer(0, { log: () => {} });
    store = new ConvexHttpClient(local.url, { skipConvexDeploymentUrlCheck: true });
    for (const instance of ["stats-1", "stats-2", "stats-3"]) await hello(instance);
  });

  afterAll(() => {
    local.server.close();
    vi.useRealTimers();
  });

  test("(a) a steady sync, and one with panic while nothing fails, get and patch the heartbeat and read the live count", async () => {
    const steady = await measured(() => send("stats-1", {}));
    // The heartbeat twice (the get and the patch's read) and the live count.
    expect(steady).toMatchObject({ documentsRead: 3, documentsWritten: 1, bytesWritten: BEAT_WRITE });
    // panic.failing [] with no rows: one more index range, empty: no byte.
    expect(await measured(() => panic("stats-1", []))).toEqual(steady);
  });

  test("(b) a failing sync reads the same documents with 3 instances as with 30: nothing grows with the fleet", async () => {
    // The first failure of a check: the row, one counter shard (new), the recount mark.
    const first = await measured(() => panic("stats-2", ["mastra"]));
    expect(first.documentsWritten).toBeLessThanOrEqual(4);
    // A refresh while it fails: no row, no counter written; the verdict read.
    const refresh = await measured(() => panic("stats-2", ["mastra"]));
    expect(refresh).toMatchObject({ documentsWritten: 1, bytesWritten: BEAT_WRITE });
    const small = await measured(() => panic("stats-3", ["mastra"]));
    for (let i = 0; i < 27; i++) await hello(`more-${i}`);
    const large = await measured(() => panic("stats-1", ["mastra"]));
    expect(large.documentsRead).toBe(small.documentsRead);
    expect(large.documentsWritten).toBe(small.documentsWritten);
    // Recovery: the row deleted, one counter shard decremented.
    const recovered = await measured(() => panic("stats-1", []));
    expect(recovered.documentsWritten).toBeLessThanOrEqual(4);
  });

  test("(d) a shared-check sync as holder and as non-holder", async () => {
    // The first caller takes the lease and stores its result (and the check's status).
    const taken = await measured(() => shared("stats-1", true));
    expect(taken.documentsWritten).toBe(3);
    // The holder renews (no new result): heartbeat and lease.
    expect((await measured(() => shared("stats-1", false))).documentsWritten).toBe(2);
    // A non-holder reads the lease (and the holder's result) and writes its heartbeat only.
    expect(await measured(() => shared("stats-2", false))).toMatchObject({ documentsWritten: 1, bytesWritten: BEAT_WRITE });
  });
});

test("prints exactly one line before any log, and exits 0 on SIGTERM", async () => {
  expect(prod.lines[0]).toBe(`convex-local listening on ${prod.url}`);
  expect(prod.lines.slice(1).every((line) => JSON.parse(line).topic === "function_execution")).toBe(true);
  const exited = once(prod.child, "exit");
  prod.child.kill("SIGTERM");
  const [code, signal] = await exited;
  expect({ code, signal }).toEqual({ code: 0, signal: null });
});
