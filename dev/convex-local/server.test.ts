/**
 * Fidelity of the stand-in, checked with Convex's own ConvexHttpClient and raw HTTP.
 * Starts `server.ts` as `npm start` would (tsx), on a free port.
 */
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import { fileURLToPath } from "node:url";
import { ConvexHttpClient } from "convex/browser";
import { ConvexError } from "convex/values";
import { afterAll, beforeAll, describe, expect, test } from "vitest";
import { api } from "../../convex/_generated/api";

const SECRET = "server-test-secret";
const NOW = 1_795_899_714_996;
const OUTPUT = 'took 12 ms, "n":3 {1}';

let child: ChildProcess;
let url: string;
let client: ConvexHttpClient;

beforeAll(async () => {
  child = spawn(process.execPath, ["--import", "tsx", "server.ts"], {
    cwd: fileURLToPath(new URL(".", import.meta.url)),
    env: { ...process.env, PORT: "0", HEALTH_SIDECAR_SECRET: SECRET },
    stdio: ["ignore", "pipe", "inherit"],
  });
  url = await new Promise<string>((resolve, reject) => {
    let seen = "";
    child.stdout!.on("data", (chunk: Buffer) => {
      seen += chunk.toString();
      const match = /^convex-local listening on (http:\/\/127\.0\.0\.1:\d+)$/m.exec(seen);
      if (match) resolve(match[1]);
    });
    child.once("exit", (code) => reject(new Error(`server exited early with ${code}: ${seen}`)));
  });
  client = new ConvexHttpClient(url, { skipConvexDeploymentUrlCheck: true });
}, 30_000);

afterAll(() => {
  if (child.exitCode === null) child.kill("SIGKILL");
});

const result = (check: string) => ({
  check,
  status: "pass" as const,
  observedAt: NOW,
  latencyMs: 12.5,
  output: OUTPUT,
  consecutiveFailures: 0,
  consecutiveSuccesses: 7,
  lastSuccessAt: null,
});

function post(path: string, body: unknown, contentType = "application/json") {
  return fetch(url + path, {
    method: "POST",
    headers: { "Content-Type": contentType },
    body: typeof body === "string" ? body : JSON.stringify(body),
  });
}

describe("with the official ConvexHttpClient", () => {
  test("a mutation, then a query returning the row with its numbers intact", async () => {
    const written = await client.mutation(api.health.report, {
      secret: SECRET,
      now: NOW,
      instance: "web-1",
      ttlSeconds: 60,
      results: [result("convex"), result("app")],
    });
    expect(written).toEqual({ written: 2, expiresAt: NOW + 60_000 });

    const rows = await client.query(api.health.instance, { secret: SECRET, now: NOW, instance: "web-1" });
    expect(rows).toEqual([
      { instance: "web-1", ...result("app"), expiresAt: NOW + 60_000 },
      { instance: "web-1", ...result("convex"), expiresAt: NOW + 60_000 },
    ]);
  });

  test("a ConvexError keeps its data (code unauthorized) across the wire", async () => {
    const error = await client.query(api.health.fleet, { secret: "wrong", now: NOW }).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ConvexError);
    expect((error as ConvexError<{ code: string }>).data).toMatchObject({ code: "unauthorized" });
  });

  test("an argument validation failure is a plain function error", async () => {
    const error = await client
      .query(api.health.fleet, { secret: SECRET, now: NOW, extra: 1 } as never)
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(Error);
    expect(error).not.toBeInstanceOf(ConvexError);
    expect((error as Error).message).toMatch(/ArgumentValidationError/);
  });

  test("concurrent claims are serialized: exactly one of 20 is granted", async () => {
    const answers = await Promise.all(
      Array.from({ length: 20 }, (_, i) =>
        client.mutation(
          api.health.claim,
          { secret: SECRET, now: NOW, check: "shared", instance: `web-${i}`, freshMs: 1000, leaseMs: 5000 },
          { skipQueue: true },
        ),
      ),
    );
    expect(answers.filter((a) => a.granted)).toHaveLength(1);
  });
});

describe("raw HTTP", () => {
  const instanceArgs = { secret: SECRET, now: NOW, instance: "web-1" };

  test("numbers are written as floats, strings are untouched", async () => {
    const response = await post("/api/query", { path: "health:instance", args: instanceArgs, format: "json" });
    expect(response.status).toBe(200);
    const text = await response.text();
    expect(text).toMatch(/"observedAt":1795899714996\.0[,}]/);
    expect(text).toMatch(/"consecutiveSuccesses":7\.0[,}]/);
    expect(text).toMatch(/"latencyMs":12\.5[,}]/);
    expect(text).toContain(`"output":${JSON.stringify(OUTPUT)}`);
    expect(text).toContain('"lastSuccessAt":null');
    expect(JSON.parse(text).status).toBe("success");
  });

  test("/api/run/<module>/<function> takes the path from the URL", async () => {
    const response = await post("/api/run/health/instance", { args: instanceArgs, format: "json" });
    expect(response.status).toBe(200);
    const body = await response.json();
    expect(body.status).toBe("success");
    expect(body.value.map((r: { check: string }) => r.check)).toEqual(["app", "convex"]);
  });

  test("args may be an object or a one-element list", async () => {
    const response = await post("/api/query", { path: "health:instance", args: [instanceArgs], format: "json" });
    expect((await response.json()).value).toHaveLength(2);
  });

  test("a ConvexError is HTTP 200 with status error and errorData", async () => {
    const response = await post("/api/mutation", { path: "health:report", args: { ...instanceArgs, secret: "x", ttlSeconds: 1, results: [] }, format: "json" });
    expect(response.status).toBe(200);
    const body = await response.json();
    expect(body).toMatchObject({ status: "error", errorData: { code: "unauthorized" } });
    expect(typeof body.errorMessage).toBe("string");
  });

  test.each([
    ["an unknown function", "/api/query", { path: "health:nope", args: {} }, /Could not find public function for 'health:nope'/],
    ["an internal function", "/api/mutation", { path: "health:purgeExpired", args: {} }, /Could not find public function/],
    ["a mutation on /api/query", "/api/query", { path: "health:report", args: {} }, /as Query, but it is defined as Mutation/],
    ["a query on /api/action", "/api/action", { path: "health:fleet", args: {} }, /as Action, but it is defined as Query/],
    ["args that are not an object", "/api/query", { path: "health:fleet", args: "x" }, /Validator error|ArgumentValidationError/],
    ["two positional args", "/api/query", { path: "health:fleet", args: [{}, {}] }, /Invalid arguments/],
    ["args with a reserved $ key", "/api/query", { path: "health:fleet", args: { $bad: 1 } }, /Invalid arguments/],
  ])("%s is a function error (HTTP 200), as in Convex", async (_, endpoint, body, message) => {
    const response = await post(endpoint, body);
    expect(response.status).toBe(200);
    const json = await response.json();
    expect(json.status).toBe("error");
    expect(json.errorMessage).toMatch(message);
    expect(json.errorData).toBeUndefined();
  });

  test.each([
    ["bad JSON", "/api/query", "{nope", "BadJsonBody"],
    ["a JSON body that is not an object", "/api/query", "[1]", "BadJsonBody"],
    ["a missing path", "/api/query", { args: {} }, "BadJsonBody"],
    ["missing args", "/api/query", { path: "health:fleet" }, "BadJsonBody"],
    ["a malformed path", "/api/mutation", { path: "health:re port", args: {} }, "BadConvexFunctionIdentifier"],
    ["an unknown format", "/api/query", { path: "health:fleet", args: {}, format: "xml" }, "BadFormat"],
    ["a format named like an Object method", "/api/query", { path: "health:fleet", args: {}, format: "toString" }, "BadFormat"],
    ["/api/run without a function", "/api/run/health", { args: {} }, "MissingIdentifier"],
  ])("%s is a 400 request error", async (_, endpoint, body, code) => {
    const response = await post(endpoint, body);
    expect(response.status).toBe(400);
    expect(await response.json()).toMatchObject({ code, message: expect.any(String) });
  });

  test("a body that is not declared as JSON is a 400", async () => {
    const response = await post("/api/query", { path: "health:fleet", args: {} }, "text/plain");
    expect(response.status).toBe(400);
    expect((await response.json()).code).toBe("BadJsonBody");
  });

  test("GET /, /version, /instance_version answer 200 text; HEAD too; others 404/405", async () => {
    const root = await fetch(url + "/");
    expect(root.status).toBe(200);
    expect(await root.text()).toBe("This Convex deployment is running. See https://docs.convex.dev/.");
    for (const path of ["/version", "/instance_version"]) {
      const response = await fetch(url + path);
      expect(response.status).toBe(200);
      expect((await response.text()).length).toBeGreaterThan(0);
      expect((await fetch(url + path, { method: "HEAD" })).status).toBe(200);
    }
    expect((await fetch(url + "/nope")).status).toBe(404);
    expect((await fetch(url + "/api/query")).status).toBe(405);
    expect((await post("/version", {})).status).toBe(405);
  });

  test("survives odd bodies and keeps serving", async () => {
    const bodies = ["", "null", '"str"', "1e999", '{"path":5,"args":{}}', '{"path":"health:fleet","args":null}', "[".repeat(10_000), '{"path":"health:fleet","args":{"secret":"' + "x".repeat(1_000_000) + '","now":1}}'];
    for (const body of bodies) {
      const response = await post("/api/query", body);
      expect(response.status).toBeLessThan(500);
      await response.arrayBuffer();
    }
    expect((await fetch(url + "/version")).status).toBe(200);
  });
});

test("exits 0 on SIGTERM", async () => {
  const exited = once(child, "exit");
  child.kill("SIGTERM");
  const [code, signal] = await exited;
  expect({ code, signal }).toEqual({ code: 0, signal: null });
});
