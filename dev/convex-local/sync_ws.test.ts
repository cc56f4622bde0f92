/**
 * The sync protocol of the stand-in (sync_ws.ts), checked with Convex's own ConvexClient
 * (`convex/browser`, over the `ws` package under Node) against the test-only functions of
 * testFunctions.ts, in process: subscriptions, re-runs only for commits that wrote what a query
 * read (counted in /_dev/stats), mutations over the socket, production-style errors, and the
 * faults of /_dev/sync (dropped sockets, a transition cut halfway, a restart with no data).
 */
import type { AddressInfo } from "node:net";
import { ConvexClient, ConvexHttpClient } from "convex/browser";
import { makeFunctionReference } from "convex/server";
import { ConvexError } from "convex/values";
import { afterEach, describe, expect, test } from "vitest";
import WebSocket from "ws";
import { startServer, type ConvexLocal } from "./server";
import { MAX_CLIENT_MESSAGE_BYTES } from "./sync_ws";
import { notes, tallies, testSchema } from "./testFunctions";

/** The JS client wraps the server's message: "[CONVEX M(path)] [Request ID: ...] Server Error\n  Called by client". */
const REDACTED = /\[Request ID: [0-9a-f]{16}\] Server Error(\n  Called by client)?$/;

const ref = {
  bump: makeFunctionReference<"mutation", { name: string }, number>("tallies:bump"),
  bumpLater: makeFunctionReference<"mutation", { name: string }, null>("tallies:bumpLater"),
  tally: makeFunctionReference<"query", { name: string }, number>("tallies:get"),
  add: makeFunctionReference<"mutation", { author: string; body: string }, string>("notes:add"),
  byAuthor: makeFunctionReference<"query", { author: string }, { body: string }[]>("notes:byAuthor"),
  get: makeFunctionReference<"query", { id: string }, unknown>("notes:get"),
  refuse: makeFunctionReference<"mutation", Record<string, never>, null>("notes:refuse"),
  addThenFail: makeFunctionReference<"mutation", { author: string; body: string }, null>("notes:addThenFail"),
};

type Local = ConvexLocal & { url: string; lines: string[] };
const open: { servers: Local[]; clients: ConvexClient[] } = { servers: [], clients: [] };

async function start(port = 0): Promise<Local> {
  const lines: string[] = [];
  const local = await startServer(port, { functions: { notes, tallies }, schema: testSchema, log: (l) => lines.push(l) });
  const started = { ...local, lines };
  open.servers.push(started);
  return started;
}

async function stop(local: Local): Promise<void> {
  local.sync.closeAll();
  local.server.closeAllConnections();
  await new Promise((resolve) => local.server.close(resolve));
  open.servers = open.servers.filter((s) => s !== local);
}

function client(url: string): ConvexClient {
  const c = new ConvexClient(url, { webSocketConstructor: WebSocket as unknown as typeof globalThis.WebSocket });
  open.clients.push(c);
  return c;
}

afterEach(async () => {
  await Promise.all(open.clients.splice(0).map((c) => c.close()));
  for (const local of [...open.servers]) await stop(local);
});

/** Waits (bounded: 10 s) until `predicate` holds. */
async function until(predicate: () => boolean, what: string): Promise<void> {
  for (let i = 0; i < 500; i++) {
    if (predicate()) return;
    await new Promise((r) => setTimeout(r, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

/** Values an onUpdate subscription received, in order. */
function subscribe<Args extends Record<string, unknown>, T>(
  c: ConvexClient,
  query: ReturnType<typeof makeFunctionReference<"query", Args, T>>,
  args: Args,
): { values: T[]; errors: Error[] } {
  const seen = { values: [] as T[], errors: [] as Error[] };
  c.onUpdate(
    query,
    args,
    (value) => seen.values.push(value),
    (error) => seen.errors.push(error),
  );
  return seen;
}

async function devPost(url: string, path: string, body: unknown): Promise<Response> {
  const res = await fetch(`${url}${path}`, { method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
  expect(res.status).toBe(200);
  return res;
}

async function socketCount(url: string): Promise<number> {
  return ((await (await fetch(`${url}/_dev/sync`)).json()) as { sockets: number }).sockets;
}

describe("the official ConvexClient over the sync protocol", () => {
  test("subscribes, gets the first result, then a new one after another client's mutation", async () => {
    const local = await start();
    const seen = subscribe(client(local.url), ref.tally, { name: "a" });
    await until(() => seen.values.length === 1, "the first result");
    expect(seen.values).toEqual([0]);

    await new ConvexHttpClient(local.url).mutation(ref.bump, { name: "a" });
    await until(() => seen.values.length === 2, "the result after the mutation");
    expect(seen.values).toEqual([0, 1]);

    // A second ConvexClient's mutation, over its own socket.
    expect(await client(local.url).mutation(ref.bump, { name: "a" })).toBe(2);
    await until(() => seen.values.length === 3, "the result after the socket mutation");
    expect(seen.values).toEqual([0, 1, 2]);
    expect(seen.errors).toEqual([]);
  });

  test("re-runs a query only after a commit that wrote something it read; each re-run is a counted call", async () => {
    const local = await start();
    const c = client(local.url);
    const tally = subscribe(c, ref.tally, { name: "a" });
    const byBob = subscribe(c, ref.byAuthor, { author: "bob" });
    const byAlice = subscribe(c, ref.byAuthor, { author: "alice" });
    await until(() => [tally, byBob, byAlice].every((s) => s.values.length === 1), "the first results");
    const calls = () => local.stats().functions["tallies:get"]?.calls ?? 0;
    const byAuthorCalls = () => local.stats().functions["notes:byAuthor"]?.calls ?? 0;
    expect([calls(), byAuthorCalls()]).toEqual([1, 2]);

    // notes:add writes bob's note: in a table tallies:get never reads, outside alice's index range.
    // Only notes:byAuthor({author: "bob"}) re-runs (one transition carries every re-run of a commit).
    await new ConvexHttpClient(local.url).mutation(ref.add, { author: "bob", body: "hi" });
    await until(() => byBob.values.length === 2, "byAuthor's new result");
    expect(byBob.values[1]).toMatchObject([{ author: "bob", body: "hi" }]);
    expect([calls(), byAuthorCalls()]).toEqual([1, 3]);
    expect(tally.values).toEqual([0]);
    expect(byAlice.values).toEqual([[]]);

    // tallies:bump writes the tally it reads: one re-run, counted with its database bandwidth.
    const before = local.stats().functions["tallies:get"];
    await new ConvexHttpClient(local.url).mutation(ref.bump, { name: "a" });
    await until(() => tally.values.length === 2, "the tally's new result");
    const after = local.stats().functions["tallies:get"];
    expect(after.calls).toBe(before.calls + 1);
    expect(after.documentsRead).toBe(before.documentsRead + 1);
    expect(after.bytesRead).toBeGreaterThan(before.bytesRead);
  });

  test("a scheduled function's commit re-runs the queries it wrote under", async () => {
    const local = await start();
    const seen = subscribe(client(local.url), ref.tally, { name: "later" });
    await until(() => seen.values.length === 1, "the first result");
    await new ConvexHttpClient(local.url).mutation(ref.bumpLater, { name: "later" });
    await until(() => seen.values.at(-1) === 1, "the scheduled bump's result");
    expect(seen.values).toEqual([0, 1]);
  });

  test("a mutation over the socket returns its value", async () => {
    const local = await start();
    const c = client(local.url);
    expect(await c.mutation(ref.bump, { name: "m" })).toBe(1);
    expect(await c.mutation(ref.bump, { name: "m" })).toBe(2);
    expect(await new ConvexHttpClient(local.url).query(ref.tally, { name: "m" })).toBe(2);
    expect(local.stats().functions["tallies:bump"].calls).toBe(2);
  });

  test("errors are redacted as a production deployment redacts them, and logged in full", async () => {
    const local = await start();
    const c = client(local.url);

    const thrown = await c.mutation(ref.addThenFail, { author: "x", body: "y" }).catch((e: unknown) => e);
    expect(thrown).toBeInstanceOf(Error);
    expect((thrown as Error).message).toMatch(REDACTED);
    expect((thrown as Error).message).not.toContain("boom");
    expect(local.lines.some((l) => l.includes("Uncaught Error: boom"))).toBe(true);
    // Rolled back: nothing was written.
    expect(await new ConvexHttpClient(local.url).query(ref.byAuthor, { author: "x" })).toEqual([]);

    const refused = await c.mutation(ref.refuse, {}).catch((e: unknown) => e);
    expect(refused).toBeInstanceOf(ConvexError);
    expect((refused as ConvexError<{ code: string }>).data).toEqual({ code: "refused", message: "no" });

    const failing = subscribe(c, ref.get, { id: "not-an-id" });
    await until(() => failing.errors.length === 1, "the query's error");
    expect(failing.errors[0].message).toMatch(REDACTED);
    expect(failing.errors[0].message).not.toContain("Validator");
    expect(failing.values).toEqual([]);
    expect(local.lines.some((l) => l.includes("ArgumentValidationError"))).toBe(true);
  });
});

describe("faults of /_dev/sync", () => {
  test("a socket dropped mid-transition: the client reconnects, resubscribes, and sees later commits", async () => {
    const local = await start();
    const seen = subscribe(client(local.url), ref.tally, { name: "f" });
    await until(() => seen.values.length === 1, "the first result");

    const dropped = (await (await devPost(local.url, "/_dev/sync/drop", { how: "midTransition" })).json()) as { dropped: number };
    expect(dropped.dropped).toBe(1);
    // The client reconnects (its backoff is about 0.1-1 s) and sends its query set again.
    await until(() => local.stats().functions["tallies:get"]?.calls === 2, "the re-subscription");
    await new ConvexHttpClient(local.url).mutation(ref.bump, { name: "f" });
    await until(() => seen.values.at(-1) === 1, "the result after the reconnect");
  });

  test("a reset connection, then a restart with no data: the client follows the new server", async () => {
    const first = await start();
    const port = (first.server.address() as AddressInfo).port;
    const seen = subscribe(client(first.url), ref.tally, { name: "r" });
    await new ConvexHttpClient(first.url).mutation(ref.bump, { name: "r" });
    await until(() => seen.values.at(-1) === 1, "the tally at 1");

    await stop(first);
    const second = await start(port);
    await until(() => seen.values.at(-1) === 0, "the empty server's result");
    expect(await socketCount(second.url)).toBe(1);

    await devPost(second.url, "/_dev/sync/drop", { how: "reset" });
    await new ConvexHttpClient(second.url).mutation(ref.bump, { name: "r" });
    await until(() => seen.values.at(-1) === 1, "the result after the reset");
  });

  test("bad fault bodies are refused", async () => {
    const local = await start();
    const res = await fetch(`${local.url}/_dev/sync/drop`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ how: "gently" }),
    });
    expect(res.status).toBe(400);
    expect(await res.json()).toMatchObject({ code: "BadFault" });
  });
});

describe("raw WebSockets", () => {
  /** Opens a raw socket to `path` and collects what the server sends. */
  async function raw(url: string, path = "/api/sync"): Promise<{ ws: WebSocket; messages: Record<string, unknown>[]; closed: Promise<number> }> {
    const ws = new WebSocket(url.replace("http", "ws") + path);
    const messages: Record<string, unknown>[] = [];
    ws.on("message", (data) => messages.push(JSON.parse(data.toString()) as Record<string, unknown>));
    const closed = new Promise<number>((resolve) => ws.once("close", (code) => resolve(code)));
    await new Promise((resolve, reject) => ws.once("open", resolve).once("error", reject));
    return { ws, messages, closed };
  }

  test("a message the server does not understand is a FatalError, then a close", async () => {
    const local = await start();
    const socket = await raw(local.url);
    socket.ws.send(JSON.stringify({ type: "Subscribe", query: "tallies:get" }));
    await socket.closed;
    expect(socket.messages).toEqual([
      { type: "FatalError", error: 'Received Invalid JSON on websocket: unknown variant "Subscribe"' },
    ]);
  });

  test("a query set modification from the wrong base version is a FatalError", async () => {
    const local = await start();
    const socket = await raw(local.url, "/api/1.48.0/sync");
    socket.ws.send(JSON.stringify({ type: "Connect", sessionId: "00000000-0000-4000-8000-000000000000", connectionCount: 0 }));
    socket.ws.send(JSON.stringify({ type: "ModifyQuerySet", baseVersion: 3, newVersion: 4, modifications: [] }));
    await socket.closed;
    expect(socket.messages).toEqual([
      { type: "FatalError", error: "Base version 3 passed up doesn't match the current version 0" },
    ]);
  });

  test("a transition carries the query's value in Convex's encoded JSON, numbers as floats", async () => {
    const local = await start();
    await new ConvexHttpClient(local.url).mutation(ref.bump, { name: "w" });
    const socket = await raw(local.url);
    socket.ws.send(JSON.stringify({ type: "Connect", sessionId: "00000000-0000-4000-8000-000000000001", connectionCount: 0 }));
    socket.ws.send(
      JSON.stringify({
        type: "ModifyQuerySet",
        baseVersion: 0,
        newVersion: 1,
        modifications: [{ type: "Add", queryId: 7, udfPath: "tallies:get", args: [{ name: "w" }] }],
      }),
    );
    await until(() => socket.messages.length === 1, "the transition");
    const [transition] = socket.messages;
    expect(transition).toMatchObject({
      type: "Transition",
      startVersion: { querySet: 0, identity: 0, ts: "AAAAAAAAAAA=" },
      endVersion: { querySet: 1, identity: 0 },
      modifications: [{ type: "QueryUpdated", queryId: 7, value: 1, logLines: [], journal: null }],
    });
    socket.ws.close();
  });

  test("a message over the bound closes the socket 1009", async () => {
    const local = await start();
    const socket = await raw(local.url);
    socket.ws.send("x".repeat(MAX_CLIENT_MESSAGE_BYTES + 1));
    expect(await socket.closed).toBe(1009);
    expect(socket.messages).toEqual([]);
  });

  test("an upgrade that a fault of /_dev/faults matches is refused with the fault's answer", async () => {
    const local = await start();
    await devPost(local.url, "/_dev/faults", { status: 503, times: 1, paths: ["/api/sync"] });
    const refused = await raw(local.url).catch((e: Error) => e);
    expect(refused).toBeInstanceOf(Error);
    expect((refused as Error).message).toContain("503");
    const socket = await raw(local.url);
    socket.ws.close();
  });
});
