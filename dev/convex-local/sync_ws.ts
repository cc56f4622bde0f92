/**
 * Convex's WebSocket sync protocol, served by convex-local (dev only) at `/api/sync` and
 * `/api/<client version>/sync` on the stand-in's HTTP server: the protocol the official clients
 * speak (`convex/browser`'s ConvexClient, the Rust-based Python `convex` client).
 *
 * Message shapes and behaviour follow convex-backend: crates/sync_types/src/types/json.rs (the
 * JSON of Connect, ModifyQuerySet, Mutation, Action, Authenticate, Event; Transition with its
 * StateVersions, QueryUpdated / QueryFailed / QueryRemoved, MutationResponse, ActionResponse,
 * AuthError, FatalError, Ping), crates/sync/src/worker.rs and state.rs (one transition at a time,
 * to the latest timestamp; an unchanged result is not sent again; a failed base version is a
 * FatalError) and crates/local_backend/src/subs/mod.rs (WebSocket pings every 5 s, a client
 * silent for 120 s is dropped, a sync Ping after 15 s without a message).
 *
 * A subscribed query re-runs only after a commit that wrote something it read (`invalidatedBy`),
 * each re-run counted in `/_dev/stats` like any function call; errors are redacted as on the HTTP
 * routes (failures.ts). Dev-only routes under `/_dev/sync` show the sockets and inject the faults
 * a client must survive (see `syncRoutes`).
 */
import { createHash, randomBytes } from "node:crypto";
import type { IncomingMessage, Server, ServerResponse } from "node:http";
import type { Duplex } from "node:stream";
import { convexToJson, type JSONValue, type Value } from "convex/values";
import { WebSocketServer, type RawData, type WebSocket } from "ws";
import { deploymentLogLine, errorMessage, type ErrorStyle, type FailedCall, type FunctionKind } from "./failures.js";
import type { FaultInjector } from "./faults.js";
import { intersects, type ReadSet, type WriteSet } from "./readsets.js";
import type { CommitListener } from "./usage.js";
import { MAX_API_BODY_BYTES, RequestError, encodeTs, floatJson, readJsonBody, send } from "./wire.js";

/** `/api/sync` (the Rust and Python clients) and `/api/1.48.0/sync` (the JS client). */
const SYNC_PATH = /^\/api\/(?:[\w.+-]+\/)?sync$/;
/** WebSocket-level pings, and the client timeout (crates/local_backend/src/subs/mod.rs). */
const HEARTBEAT_MS = 5_000;
const CLIENT_TIMEOUT_MS = 120_000;
/** A sync-protocol `Ping` after this long without a message (crates/sync/src/worker.rs). */
const PING_MS = 15_000;
/** The largest client message taken (the stand-in's own bound; the same as an /api/ body). */
export const MAX_CLIENT_MESSAGE_BYTES = MAX_API_BODY_BYTES;
/** While more than this waits to be sent to a slow reader, no new transition is computed. */
const MAX_BUFFERED_BYTES = 1 << 20;
const SLOW_READER_RETRY_MS = 50;

/** A function call's outcome, as the stand-in's backend returns it, with what it read. */
export type SyncCallResult = ({ ok: true; value: Value } | ({ ok: false } & Omit<FailedCall, "requestId">)) & {
  readSet: ReadSet;
};

/** What the sync protocol needs of the stand-in's backend. */
export interface SyncBackend {
  readonly meter: { onCommit(listener: CommitListener): () => void };
  call(endpoint: FunctionKind, path: string, rawArgs: unknown): Promise<SyncCallResult>;
  latestTimestamp(): bigint;
}

export interface SyncOptions {
  backend: SyncBackend;
  faults: FaultInjector;
  style: ErrorStyle;
  log: (line: string) => void;
}

/** A dev route, shaped as server.ts's. */
export interface SyncRoute {
  methods: readonly string[];
  handle: (req: IncomingMessage, res: ServerResponse, path: string) => Promise<void> | void;
}

/** The sync protocol of one stand-in. */
export interface SyncServer {
  /** Dev routes under `/_dev/sync`, by path. */
  routes: [string, SyncRoute][];
  /** Drops every sync socket (at shutdown). */
  closeAll(): void;
}

// ------------------------------------------------------------------ wire values

/** JSON text spliced into a message as is (a function's value, numbers written as floats). */
class Raw {
  constructor(readonly text: string) {}
}

function stringify(value: unknown): string {
  if (value instanceof Raw) return value.text;
  if (Array.isArray(value)) return `[${value.map(stringify).join(",")}]`;
  if (value !== null && typeof value === "object") {
    const fields = Object.entries(value).filter(([, v]) => v !== undefined);
    return `{${fields.map(([k, v]) => `${JSON.stringify(k)}:${stringify(v)}`).join(",")}}`;
  }
  return JSON.stringify(value ?? null);
}

/** A Convex value as the backend packs it: Convex's encoded JSON, every number a float. */
function packed(value: Value): Raw {
  return new Raw(floatJson(convexToJson(value)));
}

interface Version {
  querySet: number;
  identity: number;
  ts: bigint;
}

function encodeVersion({ querySet, identity, ts }: Version) {
  return { querySet, identity, ts: encodeTs(ts) };
}

function decodeTs(text: unknown): bigint {
  const bytes = typeof text === "string" ? Buffer.from(text, "base64") : Buffer.alloc(0);
  if (bytes.length !== 8) throw badRequest("WSMessageInvalidJson", "Received Invalid JSON on websocket: u64 must be 8 bytes");
  return bytes.readBigUInt64LE();
}

/** A client error: the socket gets a `FatalError` with this message, then closes. */
function badRequest(code: string, message: string): RequestError {
  return new RequestError(400, code, message);
}

// ------------------------------------------------------------- client messages

interface AddQuery {
  type: "Add";
  queryId: number;
  udfPath: string;
  args: JSONValue[];
}

interface RemoveQuery {
  type: "Remove";
  queryId: number;
}

type ClientMessage =
  | { type: "Connect"; sessionId: string; maxObservedTimestamp?: string; clientTs?: number }
  | { type: "ModifyQuerySet"; baseVersion: number; newVersion: number; modifications: (AddQuery | RemoveQuery)[] }
  | { type: "Mutation" | "Action"; requestId: number; udfPath: string; args: JSONValue[] }
  | { type: "Authenticate"; tokenType: string; baseVersion: number }
  | { type: "Event" };

const isCount = (v: unknown): v is number => Number.isSafeInteger(v) && (v as number) >= 0;
const isText = (v: unknown): v is string => typeof v === "string";

/** Parses one client message, refusing what Convex's `ClientMessage::try_from` refuses. */
function parseClientMessage(text: string): ClientMessage {
  let message: Record<string, unknown>;
  try {
    message = JSON.parse(text) as Record<string, unknown>;
  } catch (e) {
    throw invalid((e as Error).message);
  }
  if (message === null || typeof message !== "object" || Array.isArray(message)) throw invalid("expected an object");
  const need = (ok: boolean, what: string) => {
    if (!ok) throw invalid(`${String(message.type)}: ${what}`);
  };
  switch (message.type) {
    case "Connect":
      need(isText(message.sessionId) && isCount(message.connectionCount), "sessionId and connectionCount are required");
      break;
    case "ModifyQuerySet": {
      need(isCount(message.baseVersion) && isCount(message.newVersion), "baseVersion and newVersion are required");
      need(Array.isArray(message.modifications), "ModifyQuerySet lacks modifications");
      for (const m of message.modifications as Record<string, unknown>[]) {
        const add = m?.type === "Add" && isCount(m.queryId) && isText(m.udfPath) && Array.isArray(m.args);
        need(add || (m?.type === "Remove" && isCount(m.queryId)), "a modification is an Add (queryId, udfPath, args) or a Remove (queryId)");
      }
      break;
    }
    case "Mutation":
    case "Action":
      need(isCount(message.requestId) && isText(message.udfPath), "requestId and udfPath are required");
      need(Array.isArray(message.args), `${message.type} lacks args`);
      break;
    case "Authenticate":
      need(isCount(message.baseVersion) && isText(message.tokenType), "baseVersion and tokenType are required");
      break;
    case "Event":
      break;
    default:
      throw invalid(`unknown variant ${JSON.stringify(message.type)}`);
  }
  return message as unknown as ClientMessage;
}

function invalid(detail: string): RequestError {
  return badRequest("WSMessageInvalidJson", `Received Invalid JSON on websocket: ${detail}`);
}

// ------------------------------------------------------------------ a session

interface Subscription {
  udfPath: string;
  args: JSONValue[];
  /** What the client was last sent (request ids left out, as Convex's result hash leaves them). */
  lastSent: string | null;
  /** Needs a run: new, or a commit wrote something it read. */
  dirty: boolean;
  /** What its last run read (null: not run yet). */
  readSet: ReadSet | null;
}

/** Whether a commit that wrote `writeSet` can change `query`'s result: it wrote into its read set. */
function invalidatedBy(query: Subscription, writeSet: WriteSet): boolean {
  return query.readSet === null || intersects(query.readSet, writeSet);
}

/** One sync socket: its query set, versions and the transitions it is sent, one at a time. */
class SyncSession {
  #version: Version = { querySet: 0, identity: 0, ts: 0n };
  #received = { querySet: 0, identity: 0 };
  #pending: (AddQuery | RemoveQuery)[] = [];
  readonly #queries = new Map<number, Subscription>();
  #sessionId: string | null = null;
  #clockSkew: number | null = null;
  #work: Promise<void> = Promise.resolve();
  #updateQueued = false;
  #closed = false;
  #lastReceived = Date.now();
  #lastSent = Date.now();
  readonly #heartbeat: NodeJS.Timeout;
  /** Fault: the next transition is cut halfway and the connection dropped. */
  cutNextTransition = false;

  constructor(
    private readonly hub: SyncHub,
    private readonly ws: WebSocket,
    private readonly socket: Duplex,
  ) {
    ws.on("message", (data: RawData, isBinary: boolean) => this.#onMessage(data, isBinary));
    ws.on("close", () => this.#stop());
    ws.on("error", () => this.#stop());
    ws.on("pong", () => (this.#lastReceived = Date.now()));
    this.#heartbeat = setInterval(() => this.#beat(), HEARTBEAT_MS).unref();
  }

  get sessionId(): string | null {
    return this.#sessionId;
  }

  get queries(): string[] {
    return [...this.#queries.values()].map((q) => q.udfPath);
  }

  /** A commit wrote `writeSet`: re-run the queries it invalidates. */
  invalidate(writeSet: WriteSet): void {
    let any = false;
    for (const query of this.#queries.values()) {
      if (!query.dirty && invalidatedBy(query, writeSet)) any = query.dirty = true;
    }
    if (any) this.scheduleUpdate();
  }

  /** Queues a transition to the latest timestamp (at most one queued at a time). */
  scheduleUpdate(): void {
    if (this.#updateQueued || this.#closed) return;
    this.#updateQueued = true;
    this.#enqueue(() => this.#update());
  }

  /** Drops the connection: a clean close, or (`reset`) the TCP connection without a close frame. */
  drop(how: "close" | "reset"): void {
    if (how === "close") this.ws.close(1001, "GoingAway");
    else this.socket.destroy();
    this.#stop();
  }

  /** Sends a message as is (a dev fault: e.g. one the client does not understand). */
  sendRaw(message: unknown): void {
    this.#send(message);
  }

  #onMessage(data: RawData, isBinary: boolean): void {
    this.#lastReceived = Date.now();
    if (isBinary) return this.#fail(new Error("Unexpected message type: Binary"));
    let message: ClientMessage;
    try {
      message = parseClientMessage(data.toString());
    } catch (error) {
      return this.#fail(error);
    }
    this.#enqueue(() => this.#handle(message));
  }

  #enqueue(step: () => Promise<void> | void): void {
    this.#work = this.#work.then(async () => {
      if (this.#closed) return;
      try {
        await step();
      } catch (error) {
        this.#fail(error);
      }
    });
  }

  async #handle(message: ClientMessage): Promise<void> {
    switch (message.type) {
      case "Connect":
        return this.#connect(message);
      case "ModifyQuerySet": {
        const { baseVersion, newVersion, modifications } = message;
        if (baseVersion !== this.#received.querySet) {
          throw badRequest(
            "BaseVersionMismatch",
            `Base version ${baseVersion} passed up doesn't match the current version ${this.#received.querySet}`,
          );
        }
        if (newVersion <= baseVersion) throw new Error(`query set version ${newVersion} <= ${baseVersion}`);
        this.#pending.push(...modifications);
        this.#received.querySet = newVersion;
        return this.scheduleUpdate();
      }
      case "Mutation":
      case "Action":
        return await this.#callFunction(message);
      case "Authenticate":
        return this.#authenticate(message);
      case "Event":
        return;
    }
  }

  #connect({ sessionId, maxObservedTimestamp, clientTs }: Extract<ClientMessage, { type: "Connect" }>): void {
    this.#sessionId = sessionId;
    if (typeof clientTs === "number") this.#clockSkew = clientTs - Date.now();
    if (maxObservedTimestamp !== undefined && maxObservedTimestamp !== null) {
      const observed = decodeTs(maxObservedTimestamp);
      const latest = this.hub.backend.latestTimestamp();
      if (observed > latest) throw new Error(`Client has observed a timestamp ${observed} ahead of the backend latest known timestamp ${latest}`);
    }
  }

  #authenticate({ tokenType, baseVersion }: Extract<ClientMessage, { type: "Authenticate" }>): void {
    if (baseVersion !== this.#received.identity) throw new Error(`identity version ${baseVersion} != ${this.#received.identity}`);
    if (tokenType !== "None") {
      // The stand-in has no auth providers and no admin key: any token is refused, as a
      // deployment without auth configured refuses it.
      this.#send({
        type: "AuthError",
        error: "No auth provider found matching the given token (convex-local has no authentication)",
        baseVersion,
        authUpdateAttempted: true,
      });
      return this.drop("close");
    }
    this.#received.identity = baseVersion + 1;
    this.scheduleUpdate();
  }

  async #callFunction({ type, requestId, udfPath, args }: Extract<ClientMessage, { type: "Mutation" | "Action" }>) {
    const kind = type === "Mutation" ? "mutation" : "action";
    const result = await this.hub.backend.call(kind, udfPath, args);
    const response = { type: `${type}Response`, requestId, logLines: [] as string[] };
    if (result.ok) {
      const ts = type === "Mutation" ? encodeTs(this.hub.backend.latestTimestamp()) : undefined;
      this.#send({ ...response, success: true, result: packed(result.value), ts });
    } else {
      const id = this.#requestId(requestId);
      const { failure } = result;
      this.hub.log(deploymentLogLine({ ...result, requestId: id }));
      const errorData = failure.data === undefined ? undefined : packed(failure.data);
      const ts = type === "Mutation" ? null : undefined;
      this.#send({ ...response, success: false, result: errorMessage(id, failure, this.hub.style), ts, errorData });
    }
    // Convex sends a transition after every mutation or action, past its timestamp.
    this.scheduleUpdate();
  }

  /** `RequestId::new_for_ws_session`: the first 16 hex of SHA-256("<session>|<request>"). */
  #requestId(requestId: number): string {
    if (this.#sessionId === null) return randomBytes(8).toString("hex");
    return createHash("sha256").update(`${this.#sessionId}|${requestId}`).digest("hex").slice(0, 16);
  }

  /** One transition: the query set changes, the queries that need a run, the latest timestamp. */
  async #update(): Promise<void> {
    this.#updateQueued = false;
    if (this.hub.silent) return void this.hub.deferred.add(this);
    if (this.ws.bufferedAmount > MAX_BUFFERED_BYTES) {
      // A slow reader: compute nothing new until it has read what it was sent.
      setTimeout(() => this.scheduleUpdate(), SLOW_READER_RETRY_MS).unref();
      return;
    }
    const modifications: unknown[] = [];
    const querySet = this.#received.querySet;
    const identity = this.#received.identity;
    for (const change of this.#pending.splice(0)) {
      if (change.type === "Remove") {
        if (!this.#queries.delete(change.queryId)) throw new Error(`Nonexistent query id: ${change.queryId}`);
        modifications.push({ type: "QueryRemoved", queryId: change.queryId });
      } else {
        if (this.#queries.has(change.queryId)) throw new Error(`Duplicate query ID: ${change.queryId}`);
        const { udfPath, args } = change;
        this.#queries.set(change.queryId, { udfPath, args, lastSent: null, dirty: true, readSet: null });
      }
    }
    if (identity !== this.#version.identity) for (const query of this.#queries.values()) query.dirty = true;
    for (const [queryId, query] of this.#queries) {
      if (!query.dirty) continue;
      query.dirty = false;
      const modification = await this.#run(queryId, query);
      if (this.#closed) return;
      if (modification !== null) modifications.push(modification);
    }
    const end: Version = { querySet, identity, ts: this.hub.backend.latestTimestamp() };
    const transition = {
      type: "Transition",
      startVersion: encodeVersion(this.#version),
      endVersion: encodeVersion(end),
      modifications,
      clientClockSkew: this.#clockSkew,
      serverTs: new Raw(String(BigInt(Date.now()) * 1_000_000n)),
    };
    this.#version = end;
    if (this.cutNextTransition) return this.#cut(stringify(transition));
    this.#send(transition);
  }

  /** Runs a subscribed query (a counted call); null when its result is what the client has. */
  async #run(queryId: number, query: Subscription): Promise<unknown> {
    const result = await this.hub.backend.call("query", query.udfPath, query.args);
    query.readSet = result.readSet;
    const common = { queryId, logLines: [] as string[], journal: null };
    let modification: Record<string, unknown>;
    let seen: string;
    if (result.ok) {
      const value = packed(result.value);
      modification = { type: "QueryUpdated", ...common, value };
      seen = `ok ${value.text}`;
    } else {
      const requestId = randomBytes(8).toString("hex");
      const { failure } = result;
      this.hub.log(deploymentLogLine({ ...result, requestId }));
      const errorData = failure.data === undefined ? undefined : packed(failure.data);
      const message = errorMessage(requestId, failure, this.hub.style);
      modification = { type: "QueryFailed", ...common, errorMessage: message, errorData };
      seen = `error ${failure.detail} ${errorData?.text ?? ""}`;
    }
    if (seen === query.lastSent) return null;
    query.lastSent = seen;
    return modification;
  }

  /** Fault: the first half of the transition's frame, then the TCP connection drops. */
  #cut(text: string): void {
    const payload = Buffer.from(text);
    const length = payload.length;
    const header =
      length < 126
        ? Buffer.from([0x81, length])
        : length < 65536
          ? Buffer.from([0x81, 126, length >> 8, length & 0xff])
          : Buffer.concat([Buffer.from([0x81, 127]), bigEndian64(length)]);
    this.socket.write(Buffer.concat([header, payload.subarray(0, Math.floor(length / 2))]), () => this.socket.destroy());
    this.#stop();
  }

  #send(message: unknown): void {
    if (this.#closed || this.hub.silent) return;
    this.#lastSent = Date.now();
    this.ws.send(stringify(message));
  }

  #beat(): void {
    const now = Date.now();
    if (now - this.#lastReceived > CLIENT_TIMEOUT_MS) return this.drop("reset");
    if (this.hub.silent || this.#closed) return;
    this.ws.ping();
    if (now - this.#lastSent >= PING_MS) this.#send({ type: "Ping" });
  }

  /** Ends the session: a client error gets a FatalError first, anything else closes 1011. */
  #fail(error: unknown): void {
    if (this.#closed) return;
    if (error instanceof RequestError) {
      this.#send({ type: "FatalError", error: error.message });
      this.ws.close();
    } else {
      console.error("convex-local sync:", error);
      this.ws.close(1011, "InternalServerError");
    }
    this.#stop();
  }

  #stop(): void {
    if (this.#closed) return;
    this.#closed = true;
    clearInterval(this.#heartbeat);
    this.hub.sessions.delete(this);
  }
}

function bigEndian64(n: number): Buffer {
  const bytes = Buffer.alloc(8);
  bytes.writeBigUInt64BE(BigInt(n));
  return bytes;
}

// ------------------------------------------------------------------ the hub

/** The sessions of one stand-in, told of its commits. */
class SyncHub {
  readonly sessions = new Set<SyncSession>();
  /** Sessions whose update waits for the end of a `silence` fault. */
  readonly deferred = new Set<SyncSession>();
  silent = false;

  constructor(
    readonly backend: SyncBackend,
    readonly style: ErrorStyle,
    readonly log: (line: string) => void,
  ) {
    backend.meter.onCommit((writeSet) => {
      for (const session of this.sessions) session.invalidate(writeSet);
    });
  }

  setSilent(silent: boolean): void {
    this.silent = silent;
    if (silent) return;
    for (const session of this.deferred) session.scheduleUpdate();
    this.deferred.clear();
  }
}

/** Serves the sync protocol on `server`'s upgrades; returns its dev routes. */
export function attachSync(server: Server, { backend, faults, style, log }: SyncOptions): SyncServer {
  const hub = new SyncHub(backend, style, log);
  const wss = new WebSocketServer({ noServer: true, maxPayload: MAX_CLIENT_MESSAGE_BYTES, perMessageDeflate: false });
  server.on("upgrade", (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const path = new URL(req.url ?? "/", "http://127.0.0.1").pathname;
    const fault = faults.take(path);
    if (!SYNC_PATH.test(path) || fault !== null) {
      const status = fault?.status ?? 404;
      const body = fault?.body ?? "Not Found";
      socket.end(`HTTP/1.1 ${status} Error\r\nContent-Type: ${fault?.type ?? "text/plain"}\r\nContent-Length: ${Buffer.byteLength(body)}\r\nConnection: close\r\n\r\n${body}`);
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      hub.sessions.add(new SyncSession(hub, ws, socket));
    });
  });
  const closeAll = () => {
    for (const session of [...hub.sessions]) session.drop("reset");
  };
  return { routes: syncRoutes(hub), closeAll };
}

// ------------------------------------------------------------------ dev routes

const DROPS = ["reset", "close", "midTransition"] as const;

/**
 * `GET /_dev/sync`: the open sync sockets. `POST /_dev/sync/drop` `{"how": "reset" | "close" |
 * "midTransition"}`: drops every open socket (reset: the TCP connection, no close frame; close: a
 * close frame 1001; midTransition: each socket's next transition is cut halfway, then the
 * connection drops). `POST /_dev/sync/silence` `{"silent": true|false}`: the server sends nothing
 * (no pings, transitions or responses) until set false. `POST /_dev/sync/send` `{"message": ...}`:
 * sends a message as is on every open socket.
 */
function syncRoutes(hub: SyncHub): [string, SyncRoute][] {
  const answer = (res: ServerResponse, body: unknown) => send(res, 200, JSON.stringify(body));
  const state = () => ({
    sockets: hub.sessions.size,
    silent: hub.silent,
    sessions: [...hub.sessions].map((s) => ({ sessionId: s.sessionId, queries: s.queries })),
  });
  const post = (handle: (body: Record<string, unknown>) => unknown): SyncRoute => ({
    methods: ["POST"],
    handle: async (req, res) => answer(res, handle(await readJsonBody(req))),
  });
  return [
    ["/_dev/sync", { methods: ["GET", "HEAD"], handle: (_, res) => answer(res, state()) }],
    [
      "/_dev/sync/drop",
      post(({ how = "reset" }) => {
        if (!(DROPS as readonly unknown[]).includes(how)) badFault(`how must be one of ${DROPS.join(", ")}`);
        const sessions = [...hub.sessions];
        for (const session of sessions) {
          if (how === "midTransition") {
            session.cutNextTransition = true;
            session.scheduleUpdate();
          } else session.drop(how as "reset" | "close");
        }
        return { dropped: sessions.length, how };
      }),
    ],
    [
      "/_dev/sync/silence",
      post(({ silent }) => {
        if (typeof silent !== "boolean") badFault("silent must be true or false");
        hub.setSilent(silent);
        return state();
      }),
    ],
    [
      "/_dev/sync/send",
      post(({ message }) => {
        if (message === undefined) badFault("message is required");
        const sessions = [...hub.sessions];
        for (const session of sessions) session.sendRaw(message);
        return { sent: sessions.length };
      }),
    ],
  ];
}

function badFault(message: string): never {
  throw new RequestError(400, "BadFault", message);
}
