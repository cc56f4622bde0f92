import { getDocumentSize } from "convex/values";
import { describe, expect, test, vi } from "vitest";
import { api, internal } from "./_generated/api";
import type { Id } from "./_generated/dataModel";
import crons from "./crons";
import { purgeExpired } from "./health";
import { LIMITS } from "./healthProtocol";
import {
  atNow,
  EMPTY,
  HOUR,
  MINUTE,
  NOW,
  SECOND,
  SECRET,
  enroll,
  beatToken,
  heartbeatOf,
  hello,
  payload,
  refusal,
  setup,
  result,
  signed,
  snapshot,
  storedRow,
  sync,
  tokenOf,
  type Call,
  type T,
} from "./test.setup";

atNow();

const rowsOf = async (t: T, instance: string) => (await snapshot(t)).results.filter((r) => r.instance === instance);

/** Seeds instance i1 (checks a, b) at NOW and moves the clock 30 s on. */
async function seeded(): Promise<T> {
  const t = setup();
  await sync(t, signed("i1", payload({ hello: hello(["a", "b"]), results: [result("a"), result("b")] })));
  vi.setSystemTime(NOW + 30 * SECOND);
  return t;
}

// ---------------------------------------------------------------------------------------------

describe("sync", () => {
  test("a first sync with hello registers the instance, inserts its heartbeat and rows, and answers warm=null", async () => {
    const t = setup();
    const answer = await sync(
      t,
      signed(
        "i1",
        payload({ hello: hello(["a", "b"]), results: [result("a"), result("b", { lastSuccessAgeMs: null })] }),
      ),
    );
    const { instances, heartbeats, results } = await snapshot(t);
    expect(heartbeats).toEqual([expect.objectContaining({ seenAt: NOW, expiresAt: NOW + 5 * MINUTE })]);
    expect(answer).toEqual({
      now: NOW,
      expiresAt: NOW + 5 * MINUTE,
      heartbeat: heartbeats[0]._id,
      token: expect.stringMatching(/^[0-9a-f]{64}$/),
      written: 2,
      resend: false,
      warm: null,
      outages: [],
      shared: [],
      drain: null,
      live: 1,
    });
    expect(instances).toEqual([
      expect.objectContaining({ instance: "i1", version: "0.2.0", heartbeat: answer.heartbeat }),
    ]);
    expect(results.map(({ _id, _creationTime, ...row }) => row)).toEqual([
      {
        instance: "i1",
        check: "a",
        fingerprint: "fp-a",
        status: "pass",
        observedAt: NOW - 1000,
        latencyMs: 12.5,
        output: "200 success",
        consecutiveFailures: 0,
        consecutiveSuccesses: 4,
        lastSuccessAt: NOW - 1000,
      },
      expect.objectContaining({ check: "b", observedAt: NOW - 1000, lastSuccessAt: null }),
    ]);
  });

  test("a later sync writes only the results it sends and renews the heartbeat, not the registry", async () => {
    const t = await seeded();
    const heartbeat = await heartbeatOf(t, "i1");
    const before = await snapshot(t);
    const later = NOW + MINUTE;
    vi.setSystemTime(later);
    const failing = result("a", {
      status: "fail",
      output: "timeout",
      ageMs: 500,
      consecutiveFailures: 1,
      consecutiveSuccesses: 0,
      lastSuccessAgeMs: 61_500,
    });
    const answer = await sync(t, signed("i1", payload({ heartbeat, version: "0.2.1", results: [failing] })));
    expect(answer).toEqual({
      now: later,
      expiresAt: later + 5 * MINUTE,
      heartbeat,
      token: null,
      written: 1,
      resend: false,
      warm: null,
      outages: [],
      shared: [],
      drain: null,
      live: 1,
    });

    const after = await snapshot(t);
    const [a0, b0] = before.results;
    const [a1, b1] = after.results;
    expect(b1).toEqual(b0); // untouched, to the creation time
    expect(a1).toEqual({
      ...a0,
      status: "fail",
      output: "timeout",
      observedAt: later - 500,
      consecutiveFailures: 1,
      consecutiveSuccesses: 0,
      lastSuccessAt: later - 61_500,
    });
    expect(after.heartbeats).toEqual([
      {
        ...before.heartbeats[0],
        seenAt: later,
        expiresAt: later + 5 * MINUTE,
        liveUntil: later + 5 * MINUTE, // no periodMs (a sidecar before v3): its TTL
        ts: later,
      },
    ]);
    // The registry (and its version) is written on hello and re-registration only: a new version
    // of the sidecar is a new process, whose first sync says hello.
    expect(after.instances).toEqual(before.instances);
  });

  test("a restart's hello answers the stored rows, aged by the server's clock", async () => {
    const t = setup();
    const first = await sync(
      t,
      signed("i1", payload({ hello: hello(["b", "a"]), results: [result("b"), result("a")] })),
    );
    vi.setSystemTime(NOW + MINUTE);
    const failing = result("a", { status: "fail", ageMs: 2000, lastSuccessAgeMs: 50_000 });
    await sync(t, signed("i1", payload({ heartbeat: first.heartbeat, results: [failing] })));

    const restart = NOW + MINUTE + 40 * SECOND;
    vi.setSystemTime(restart);
    // The caller's clock is 20 s behind: ages come from the server's clock, not from ts.
    const answer = await sync(t, signed("i1", payload({ hello: hello(["a", "b"]) }), { ts: restart - 20 * SECOND }));
    expect(answer.warm).toEqual({
      confirmedAgeMs: 40 * SECOND, // now - the previous seenAt
      results: [
        { ...result("a", { status: "fail", ageMs: 42_000, lastSuccessAgeMs: 90_000 }) },
        { ...result("b", { ageMs: 101_000, lastSuccessAgeMs: 101_000 }) },
      ],
    });
    expect(answer).toMatchObject({
      now: restart,
      expiresAt: restart + 5 * MINUTE,
      heartbeat: first.heartbeat,
      written: 0,
      resend: false,
    });
  });

  test("hello prunes the rows of checks it does not name and of changed fingerprints", async () => {
    const t = setup();
    await sync(
      t,
      signed("i1", payload({ hello: hello(["a", "b", "c"]), results: ["a", "b", "c"].map((c) => result(c)) })),
    );
    await sync(t, signed("i2", payload({ hello: hello(["c"]), results: [result("c")] })));
    const keptA = (await rowsOf(t, "i1")).find((r) => r.check === "a");

    vi.setSystemTime(NOW + MINUTE);
    const answer = await sync(t, signed("i1", payload({ hello: { a: "fp-a", b: "fp-b-v2" } })));
    expect(answer.warm?.results.map((r) => r.check)).toEqual(["a"]);
    expect(await rowsOf(t, "i1")).toEqual([keptA]);
    expect((await rowsOf(t, "i2")).map((r) => r.check)).toEqual(["c"]); // another instance's rows stay

    // The changed check's first result makes a new row.
    const heartbeat = answer.heartbeat;
    await sync(t, signed("i1", payload({ heartbeat, results: [result("b", { fingerprint: "fp-b-v2" })] })));
    expect((await rowsOf(t, "i1")).map((r) => `${r.check}/${r.fingerprint}`)).toEqual(["a/fp-a", "b/fp-b-v2"]);
  });

  test("hello with results: warm answers the rows as stored before this call's results", async () => {
    const t = await seeded();
    const answer = await sync(
      t,
      signed("i1", payload({ hello: hello(["a", "b"]), results: [result("a", { status: "warn" })] })),
    );
    expect(answer.warm?.results.map((r) => [r.check, r.status])).toEqual([
      ["a", "pass"],
      ["b", "pass"],
    ]);
    expect((await rowsOf(t, "i1")).map((r) => r.status)).toEqual(["warn", "pass"]);
  });

  test("two hellos under one name keep one registry document and one heartbeat", async () => {
    const t = setup();
    const first = await sync(t, signed("i1", payload({ hello: hello(["a"]), results: [result("a")] })));
    vi.setSystemTime(NOW + 10 * SECOND);
    const second = await sync(t, signed("i1", payload({ version: "0.3.0", hello: hello(["a"]) })));
    expect(second).toMatchObject({ heartbeat: first.heartbeat, resend: false, warm: { confirmedAgeMs: 10 * SECOND } });
    // After the heartbeat expired (not yet purged), too: the same documents are renewed.
    vi.setSystemTime(NOW + 2 * HOUR);
    const third = await sync(t, signed("i1", payload({ version: "0.3.0", hello: hello(["a"]) })));
    expect(third).toMatchObject({ heartbeat: first.heartbeat, resend: false, warm: null });
    const { instances, heartbeats } = await snapshot(t);
    expect(instances).toEqual([
      expect.objectContaining({ instance: "i1", version: "0.3.0", heartbeat: first.heartbeat }),
    ]);
    expect(heartbeats).toEqual([
      expect.objectContaining({ _id: first.heartbeat, seenAt: NOW + 2 * HOUR, expiresAt: NOW + 2 * HOUR + 5 * MINUTE }),
    ]);
  });

  test("a hello of a counted instance that changes neither version nor heartbeat writes the heartbeat and mailbox only", async () => {
    // Two documents written per transaction at most: the heartbeat and the mailbox's new token.
    const tight = setup({ documentsWritten: 2 });
    const heartbeat = await tight.run((ctx) =>
      ctx.db.insert("sidecarHeartbeats", { seenAt: NOW, expiresAt: NOW + MINUTE, liveUntil: NOW + MINUTE }),
    );
    await tight.run(async (ctx) => {
      await ctx.db.insert("sidecarInstances", { instance: "i1", version: "0.2.0", heartbeat });
      await ctx.db.insert("sidecarMailbox", { instance: "i1", heartbeat, tokenHash: "0".repeat(16) });
    });
    expect(await sync(tight, signed("i1", payload({ hello: {} })))).toMatchObject({ heartbeat, warm: { results: [] } });
    // A new version patches the registry too: three documents.
    await expect(sync(tight, signed("i1", payload({ version: "0.3.0", hello: {} })))).rejects.toThrow(/too many/i);
  });

  test("a sync without hello must name a live heartbeat of its own with its token: else unauthorized, send hello", async () => {
    const t = await seeded();
    const heartbeat = await heartbeatOf(t, "i1");
    const token = tokenOf("i1");
    const deleted = await t.run(async (ctx) => {
      const id = await ctx.db.insert("sidecarHeartbeats", { seenAt: NOW, expiresAt: NOW + HOUR });
      await ctx.db.delete("sidecarHeartbeats", id);
      return id;
    });
    const before = await snapshot(t);
    const registryId = before.instances[0]._id; // an id, but of another table
    const wrong = "0".repeat(64);
    const bodies = [
      ...["garbage", "", "h".repeat(64), `${NOW}sidecarHeartbeats`, registryId, deleted, null].map((id) => ({
        heartbeat: id,
        token,
      })),
      { heartbeat, token: wrong }, // the right heartbeat, a wrong token
      { heartbeat, token: null }, // no token (a sidecar before v3)
      {}, // neither
    ];
    for (const body of bodies) {
      const error = await refusal(sync(t, signed("i1", payload({ ...body, results: [result("a")] }))));
      expect(error.data, JSON.stringify(body)).toEqual({
        code: "unauthorized",
        message: "this instance's token does not match: send hello",
      });
    }
    expect(await snapshot(t)).toEqual(before);
    // With its own heartbeat and token, the same sync is accepted.
    expect(await sync(t, signed("i1", payload({ heartbeat, token, results: [result("a")] })))).toMatchObject({
      heartbeat,
      written: 1,
    });
  });

  test("an expired heartbeat not yet purged is refused: the hello that follows answers no warm start", async () => {
    const t = setup();
    const first = await sync(
      t,
      signed("i1", payload({ ttlMs: LIMITS.MIN_TTL_MS, hello: hello(["a"]), results: [result("a")] })),
    );
    vi.setSystemTime(NOW + LIMITS.MIN_TTL_MS);
    const refused = await refusal(sync(t, signed("i1", payload({ heartbeat: first.heartbeat }))));
    expect(refused.data.code).toBe("unauthorized");
    const again = await sync(t, signed("i1", payload({ hello: hello(["a"]) })));
    expect(again).toMatchObject({ heartbeat: first.heartbeat, warm: null, token: expect.any(String) });
    expect(again.token).not.toBe(first.token);
  });

  test("attack: a borrowed heartbeat id (a sync signed for another instance) is refused and changes nothing", async () => {
    const t = await seeded();
    const heartbeat = await heartbeatOf(t, "i1");
    const before = await snapshot(t);
    // Signed as i2 with i1's heartbeat, even with i1's token (the hash binds it to i1's name).
    for (const token of [tokenOf("i1"), null, "1".repeat(64)]) {
      const call = signed("i2", payload({ heartbeat, token, ttlMs: LIMITS.MAX_TTL_MS, results: [result("x")] }));
      expect((await refusal(sync(t, call))).data.code).toBe("unauthorized");
    }
    expect(await snapshot(t)).toEqual(before);
  });

  test("attack: a replayed sync (the same call, or an older ts) is refused `replayed` and changes nothing", async () => {
    const t = await seeded();
    const heartbeat = await heartbeatOf(t, "i1");
    const failing = signed("i1", payload({ heartbeat, results: [result("a", { status: "fail" })] }));
    await sync(t, failing);
    const passing = signed("i1", payload({ heartbeat, results: [result("a")] }));
    await sync(t, passing);
    const before = await snapshot(t);
    // The captured failing sync, replayed within the window: the row stays `pass`.
    const replay = await refusal(sync(t, failing));
    expect(replay.data).toEqual({
      code: "replayed",
      message: "ts is not newer than this instance's last accepted sync: a replay, or two sidecars under one name",
    });
    expect((await refusal(sync(t, passing))).data.code).toBe("replayed");
    // An older ts with a valid signature too, and a hello replayed after a later sync.
    const older = signed("i1", payload({ heartbeat, results: [] }), { ts: passing.ts - 1 });
    expect((await refusal(sync(t, older))).data.code).toBe("replayed");
    const oldHello = signed("i1", payload({ hello: hello(["a", "b"]) }), { ts: passing.ts });
    expect((await refusal(sync(t, oldHello))).data.code).toBe("replayed");
    expect(await snapshot(t)).toEqual(before);
    // A stopped instance's last sync replayed does not bring it back.
    const leaving = signed("i1", payload({ heartbeat, leaving: true }));
    await sync(t, leaving);
    const left = await snapshot(t);
    expect((await refusal(sync(t, passing))).data.code).toBe("replayed");
    expect(await snapshot(t)).toEqual(left);
  });

  test("expiresAt is the server's now + ttlMs (clamped to TTL_CLAMP_MS), whatever ts says", async () => {
    const t = setup();
    const early = await sync(
      t,
      signed("i1", payload({ hello: {}, ttlMs: LIMITS.MAX_TTL_MS }), { ts: NOW + 20 * SECOND }),
    );
    // A day asked for: the clamp, 15 minutes (a caller cannot extend its documents' life).
    expect(early).toMatchObject({ now: NOW, expiresAt: NOW + LIMITS.TTL_CLAMP_MS });
    const late = await sync(
      t,
      signed("i2", payload({ hello: {}, ttlMs: LIMITS.MIN_TTL_MS, results: [result("a", { ageMs: 0 })] }), {
        ts: NOW - 30 * SECOND,
      }),
    );
    expect(late).toMatchObject({ now: NOW, expiresAt: NOW + LIMITS.MIN_TTL_MS });
    const steady = await sync(
      t,
      signed("i1", payload({ heartbeat: early.heartbeat, ttlMs: 20_000 }), { ts: NOW + 25 * SECOND }),
    );
    expect(steady).toMatchObject({ now: NOW, expiresAt: NOW + 20_000, resend: false });
    const { heartbeats, results } = await snapshot(t);
    expect(heartbeats.map((h) => h.expiresAt)).toEqual([NOW + 20_000, NOW + LIMITS.MIN_TTL_MS]);
    expect(results[0].observedAt).toBe(NOW);
  });

  test("the bounds themselves are accepted", async () => {
    const t = setup();
    const checks = Array.from(
      { length: LIMITS.MAX_CHECKS },
      (_, i) => `${"c".repeat(60)}${String(i).padStart(4, "0")}`,
    );
    const fat = result("o", {
      output: "😀".repeat(LIMITS.MAX_OUTPUT / 2),
      ageMs: 86_400_000,
      latencyMs: 3_600_000,
      lastSuccessAgeMs: 86_400_000,
    });
    const body = JSON.stringify(
      payload({
        version: "v".repeat(40),
        hello: hello(checks, () => "f".repeat(64)),
        results: [fat, ...checks.slice(1).map((c) => result(c, { fingerprint: "f".repeat(64) }))],
      }),
    );
    const padded = body + " ".repeat(LIMITS.MAX_BODY - body.length);
    expect(padded.length).toBe(LIMITS.MAX_BODY);
    const answer = await sync(t, signed("i".repeat(200), padded));
    expect(answer.written).toBe(LIMITS.MAX_CHECKS);
    expect((await rowsOf(t, "i".repeat(200))).find((r) => r.check === "o")?.output).toHaveLength(1024);
    // ts exactly at the window's edges.
    await sync(t, signed("i1", payload({ hello: {} }), { ts: NOW - LIMITS.TIMESTAMP_WINDOW_MS }));
    await sync(t, signed("i1", payload({ hello: {} }), { ts: NOW + LIMITS.TIMESTAMP_WINDOW_MS }));
  });

  test("a steady-state sync gets and patches its heartbeat only (the bandwidth budget)", async () => {
    const t = await seeded();
    const before = await snapshot(t);
    const [beat] = before.heartbeats;
    const size = getDocumentSize(beat);
    // 63 (_id, _creationTime, braces) + seenAt 16 + expiresAt 19 + liveUntil 19 + ts 12
    // + tokenHash 20 (8 bytes)
    expect(size).toBe(149);
    // The get, the patch's read and the patch's write, and the write's by_liveUntil entry (76 +
    // 9): 3 x 149 + 85 = 532 bytes a sync, whatever the instance's name, plus the live count
    // (sidecarLive, 77 bytes once recounted). At one sync a minute (43,200 in 30 days) that is
    // 26.3 MB a month, under the budget of 30 (DESIGN.md) before the peers' ring (read once per
    // 60 minutes: convex/peers.test.ts).
    expect((3 * size + 85 + 77) * 43_200).toBe(26_308_800);
    expect((3 * size + 85 + 77) * 43_200).toBeLessThanOrEqual(30_000_000);

    const answer = await sync(t, signed("i1", payload({ heartbeat: beat._id })));
    expect(answer).toMatchObject({ heartbeat: beat._id, written: 0, resend: false });
    const after = await snapshot(t);
    expect(after.instances).toEqual(before.instances);
    expect(after.results).toEqual(before.results);
    expect(after.heartbeats).toEqual([
      {
        ...beat,
        seenAt: NOW + 30 * SECOND,
        expiresAt: NOW + 30 * SECOND + 5 * MINUTE,
        liveUntil: NOW + 30 * SECOND + 5 * MINUTE,
        ts: NOW + 30 * SECOND,
      },
    ]);

    // Under limits that one index query (the get is the one range read allowed), or any read
    // beyond the heartbeat's two, would break.
    // The queries: the live count (an empty table here) and the range of dead heartbeats (empty).
    const limits = {
      bytesRead: 2 * size,
      documentsRead: 2,
      databaseQueries: 3,
      bytesWritten: size,
      documentsWritten: 1,
    };
    const tight = setup(limits);
    const name = "a-kubernetes-pod-name-of-the-longest-kind-0123456789abcdef012345";
    const token = "7".repeat(64);
    const { _id, _creationTime, ...fields } = beat;
    const id = await tight.run((ctx) =>
      ctx.db.insert("sidecarHeartbeats", { ...fields, tokenHash: beatToken(name, token) }),
    );
    await expect(sync(tight, signed(name, payload({ heartbeat: id, token })))).resolves.toMatchObject({
      heartbeat: id,
      written: 0,
      resend: false,
    });
    // Writing one result is over this budget: the steady state writes no result at all.
    await expect(sync(tight, signed(name, payload({ heartbeat: id, token, results: [result("a")] })))).rejects.toThrow(
      /too much data|too many/i,
    );
  });

  test("non-ASCII instance, checks and output are signed over their UTF-8 bytes", async () => {
    const t = setup();
    const answer = await sync(
      t,
      signed("häst-🐎", payload({ hello: {}, results: [result("prüfung", { output: "ünïcode ✓ 😀" })] })),
    );
    expect(answer.written).toBe(1);
    expect((await rowsOf(t, "häst-🐎"))[0]).toMatchObject({ check: "prüfung", output: "ünïcode ✓ 😀" });
  });
});

// ---------------------------------------------------------------------------------------------

describe("refusals change nothing", () => {
  const tamper = (call: Call, change: Partial<Call>): Call => ({ ...call, ...change });
  const valid = () => signed("i1", payload({ results: [result("a", { status: "fail" })] }));
  const withResult = (overrides: Record<string, unknown>) =>
    signed("i1", payload({ results: [result("a", overrides)] }));
  const many = (n: number) => Array.from({ length: n }, (_, i) => `check-${i}`);
  const huge = " ".repeat(LIMITS.MAX_BODY + 1);

  type Case = [name: string, code: string, call: () => Call, secret: string | undefined];
  // Each bad call, by the code it must get (the signatures are right unless the name says otherwise).
  const unauthorized: Record<string, () => Call> = {
    "a wrong signature": () => signed("i1", payload(), { secret: "not-the-secret" }),
    "a signature over another path": () => signed("i1", payload(), { path: "health:ping" }),
    "a signature for another instance": () => tamper(valid(), { instance: "i2" }),
    "a signature for another ts": () => tamper(valid(), { ts: valid().ts + 1 }),
    "a tampered body": () => tamper(valid(), { body: valid().body.replace('"fail"', '"pass"') }),
  };
  const clockSkew: Record<string, () => Call> = {
    "ts 31 s in the past": () => signed("i1", payload(), { ts: Date.now() - 31 * SECOND }),
    "ts 31 s in the future": () => signed("i1", payload(), { ts: Date.now() + 31 * SECOND }),
  };
  const invalidArgument: Record<string, () => Call> = {
    // Bounds, checked before the signature: some of these signatures are wrong.
    "a sig that is not hex": () => tamper(valid(), { sig: "z".repeat(64) }),
    "a sig in uppercase hex": () => tamper(valid(), { sig: valid().sig.toUpperCase() }),
    "a sig one byte short": () => tamper(valid(), { sig: valid().sig.slice(2) }),
    "a sig with one extra byte": () => tamper(valid(), { sig: `${valid().sig}00` }),
    "a body over MAX_BODY, wrongly signed": () => ({ instance: "i1", ts: Date.now(), sig: "0".repeat(64), body: huge }),
    "an instance of 201 characters": () => signed("i".repeat(201), payload()),
    "an empty instance": () => signed("", payload()),
    "ts not an integer": () => signed("i1", payload(), { ts: Date.now() + 0.5 }),
    "ts negative": () => signed("i1", payload(), { ts: -1 }),
    "ts NaN": () => signed("i1", payload(), { ts: Number.NaN }),
    // The body.
    "a body that is not JSON": () => signed("i1", "{version: 1}"),
    "a body that is a JSON array": () => signed("i1", "[]"),
    "a body that is JSON null": () => signed("i1", "null"),
    "a body that is a JSON string": () => signed("i1", '"hello"'),
    "an unknown key": () => signed("i1", payload({ fleet: true })),
    "an unknown key in a result": () => withResult({ observedAt: NOW }),
    "a missing version": () => signed("i1", { ttlMs: 60_000, results: [] }),
    "missing results": () => signed("i1", { version: "1", ttlMs: 60_000 }),
    "a result without lastSuccessAgeMs": () => withResult({ lastSuccessAgeMs: undefined }),
    "version a number": () => signed("i1", payload({ version: 2 })),
    "an empty version": () => signed("i1", payload({ version: "" })),
    "a version of 41 characters": () => signed("i1", payload({ version: "v".repeat(41) })),
    "ttlMs a string": () => signed("i1", payload({ ttlMs: "60000" })),
    "ttlMs under MIN_TTL_MS": () => signed("i1", payload({ ttlMs: LIMITS.MIN_TTL_MS - 1 })),
    "ttlMs over MAX_TTL_MS": () => signed("i1", payload({ ttlMs: LIMITS.MAX_TTL_MS + 1 })),
    "ttlMs 1e400 (Infinity once parsed)": () => signed("i1", '{"version":"1","ttlMs":1e400,"results":[]}'),
    "hello an array": () => signed("i1", payload({ hello: ["a"] })),
    "a hello fingerprint not a string": () => signed("i1", payload({ hello: { a: 1 } })),
    "an empty hello fingerprint": () => signed("i1", payload({ hello: { a: "" } })),
    "a hello check of 65 characters": () => signed("i1", payload({ hello: hello(["c".repeat(65)]) })),
    "201 hello entries": () => signed("i1", payload({ hello: hello(many(201)) })),
    "a heartbeat of 65 characters": () => signed("i1", payload({ heartbeat: "h".repeat(65) })),
    "a heartbeat that is a number": () => signed("i1", payload({ heartbeat: 12 })),
    "a heartbeat that is an object": () => signed("i1", payload({ heartbeat: { id: "x" } })),
    "results an object": () => signed("i1", payload({ results: { a: result("a") } })),
    "a result that is not an object": () => signed("i1", payload({ results: ["a"] })),
    "201 results": () => signed("i1", payload({ results: many(201).map((c) => result(c)) })),
    "duplicate checks": () => signed("i1", payload({ results: [result("a"), result("b"), result("a")] })),
    "an empty check": () => withResult({ check: "" }),
    "a check of 65 characters": () => withResult({ check: "c".repeat(65) }),
    "a fingerprint of 65 characters": () => withResult({ fingerprint: "f".repeat(65) }),
    "status ok": () => withResult({ status: "ok" }),
    "ageMs negative (a result from the future)": () => withResult({ ageMs: -1 }),
    "ageMs over a day": () => withResult({ ageMs: 86_400_001 }),
    "ageMs a string": () => withResult({ ageMs: "1" }),
    "ageMs null": () => withResult({ ageMs: null }),
    "lastSuccessAgeMs negative": () => withResult({ lastSuccessAgeMs: -5 }),
    "lastSuccessAgeMs a string": () => withResult({ lastSuccessAgeMs: "x" }),
    "latencyMs negative": () => withResult({ latencyMs: -0.5 }),
    "latencyMs over an hour": () => withResult({ latencyMs: 3_600_001 }),
    "consecutiveFailures not an integer": () => withResult({ consecutiveFailures: 1.5 }),
    "consecutiveSuccesses negative": () => withResult({ consecutiveSuccesses: -1 }),
    "consecutiveSuccesses a boolean": () => withResult({ consecutiveSuccesses: true }),
    "output null": () => withResult({ output: null }),
    "output of 1025 UTF-16 units (513 code points)": () => withResult({ output: `${"😀".repeat(512)}x` }),
  };
  // The deployment's secret unset or empty: `secret` is what HEALTH_SIDECAR_SECRET becomes.
  const secretCases: Case[] = [
    ["a valid call when the secret is unset", "unauthorized", valid, undefined],
    [
      "a call signed with the empty secret when it is empty",
      "unauthorized",
      () => signed("i1", payload(), { secret: "" }),
      "",
    ],
    ["a body over MAX_BODY when the secret is unset", "invalid_argument", () => signed("i1", huge), undefined],
  ];
  const cases: Case[] = [
    ...Object.entries(unauthorized).map(([name, call]): Case => [name, "unauthorized", call, SECRET]),
    ...Object.entries(clockSkew).map(([name, call]): Case => [name, "clock_skew", call, SECRET]),
    ...Object.entries(invalidArgument).map(([name, call]): Case => [name, "invalid_argument", call, SECRET]),
    ...secretCases,
  ];

  test.each(cases)("%s -> %s", async (_, code, call, secret) => {
    const t = await seeded();
    const before = await snapshot(t);
    const args = call();
    vi.stubEnv("HEALTH_SIDECAR_SECRET", secret);
    const error = await refusal(sync(t, args));
    expect(error.data.code).toBe(code);
    // Never the secret, the signature or the body in a message.
    for (const text of [error.data.message, error.message]) {
      expect(text).not.toContain(SECRET);
      expect(text).not.toContain(args.sig);
      if (args.body.length >= 16) expect(text).not.toContain(args.body);
    }
    const after = await snapshot(t);
    expect(after).toEqual(before);
    expect(JSON.stringify(after)).toBe(JSON.stringify(before));
  });

  test("the order of checks: bounds, signature, time, body", async () => {
    const t = await seeded();
    const wrong = (call: Call): Call => ({ ...call, sig: "0".repeat(64) });
    const message = async (call: Call) => (await refusal(sync(t, call))).data.message;
    // A wrong signature with an old ts is refused for its signature, not its time.
    expect(await message(wrong(signed("i1", payload(), { ts: Date.now() - 10 * MINUTE })))).toMatch(
      /^bad signature: the sidecar's/,
    );
    // A wrong signature over a body that is not JSON is refused for its signature.
    expect(await message(wrong(signed("i1", "not json")))).toMatch(/^bad signature/);
    // An old ts over a body that is not JSON is refused for its time.
    expect(await message(signed("i1", "not json", { ts: Date.now() - 10 * MINUTE }))).toBe(
      "timestamp 600 s from the deployment's clock (at most 30 s): check the sidecar's clock",
    );
    vi.stubEnv("HEALTH_SIDECAR_SECRET", undefined);
    expect(await message(signed("i1", payload()))).toBe(
      "bad signature: HEALTH_SIDECAR_SECRET is not set on the deployment",
    );
  });

  test("the signature is checked by Web Crypto's constant-time verify, never by comparing strings", async () => {
    const t = setup();
    const importKey = vi.spyOn(crypto.subtle, "importKey");
    const verify = vi.spyOn(crypto.subtle, "verify");
    const sign = vi.spyOn(crypto.subtle, "sign");
    try {
      const call = signed("i1", payload({ hello: {} }));
      await sync(t, call);
      expect(importKey).toHaveBeenCalledTimes(1);
      expect(importKey.mock.calls[0].slice(2)).toEqual([{ name: "HMAC", hash: "SHA-256" }, false, ["verify"]]);
      expect(importKey.mock.calls[0][0]).toBe("raw");
      expect(verify).toHaveBeenCalledTimes(1);
      const [algorithm, , signature, message] = verify.mock.calls[0];
      expect(algorithm).toBe("HMAC");
      expect(Buffer.from(signature as Uint8Array).toString("hex")).toBe(call.sig);
      expect(Buffer.from(message as Uint8Array).toString("utf8")).toBe(
        `health-sidecar/1\nhealth:sync\ni1\n${NOW}\n${call.body}`,
      );
      expect(sign).not.toHaveBeenCalled();
    } finally {
      vi.restoreAllMocks();
    }
  });

  test("messages name the field", async () => {
    const t = await seeded();
    const message = async (call: Call) => (await refusal(sync(t, call))).data.message;
    expect(await message(withResult({ ageMs: -1 }))).toMatch(/^body\.results\[0\]\.ageMs /);
    expect(
      await message(signed("i1", payload({ results: [result("a"), result("b", { consecutiveFailures: 1.5 })] }))),
    ).toMatch(/^body\.results\[1\]\.consecutiveFailures /);
    expect(await message(signed("i1", { ttlMs: 60_000, results: [] }))).toBe("body.version is missing");
    expect(await message(signed("i1", payload({ hello: { a: "" } })))).toMatch(/^body\.hello's fingerprint #1 /);
  });

  test("Convex's validators refuse arguments of the wrong shape before the handler runs", async () => {
    const t = await seeded();
    const before = await snapshot(t);
    const { sig: _, ...unsigned } = valid();
    await expect(t.mutation(api.health.sync, unsigned as never)).rejects.toThrow(/Missing required field `sig`/);
    await expect(t.mutation(api.health.sync, { ...valid(), secret: SECRET } as never)).rejects.toThrow(
      /Unexpected field `secret`/,
    );
    await expect(t.mutation(api.health.sync, { ...valid(), ts: String(NOW) } as never)).rejects.toThrow(
      /Expected `number`/,
    );
    expect(await snapshot(t)).toEqual(before);
  });
});

// ---------------------------------------------------------------------------------------------

describe("limits", () => {
  const checks = (n: number, prefix = "check") =>
    Array.from({ length: n }, (_, i) => `${prefix}-${String(i).padStart(3, "0")}`);

  test("an instance keeps at most MAX_CHECKS rows; the whole sync fails on one more", async () => {
    const t = setup();
    const full = checks(LIMITS.MAX_CHECKS);
    await sync(t, signed("i1", payload({ hello: hello(full), results: full.map((c) => result(c)) })));
    expect(await rowsOf(t, "i1")).toHaveLength(LIMITS.MAX_CHECKS);
    const before = await snapshot(t);

    // Without hello (the rows are counted), an update of a known check with one new check.
    const update = result(full[0], { status: "fail" });
    const heartbeat = await heartbeatOf(t, "i1");
    const error = await refusal(
      sync(t, signed("i1", payload({ heartbeat, results: [update, result("one-more")] }))),
    );
    expect(error.data.code).toBe("limit_exceeded");
    // With hello (the kept rows are counted).
    const withHello = signed("i1", payload({ hello: hello(full), results: [update, result("one-more")] }));
    expect((await refusal(sync(t, withHello))).data.code).toBe("limit_exceeded");
    expect(await snapshot(t)).toEqual(before);

    // Known checks still update; a hello that drops one check makes room for a new one.
    expect(await sync(t, signed("i1", payload({ heartbeat, results: [update] })))).toMatchObject({ written: 1 });
    const swapped = [...full.slice(1), "one-more"];
    await sync(t, signed("i1", payload({ hello: hello(swapped), results: [result("one-more")] })));
    expect((await rowsOf(t, "i1")).map((r) => r.check).sort()).toEqual(swapped.sort());
  });

  test("at most MAX_INSTANCES counted instances (as last recounted); a counted one still syncs", async () => {
    const t = setup();
    await sync(t, signed("counted", payload({ hello: {} })));
    await t.finishAllScheduledFunctions(vi.runAllTimers); // the recount: live = 1
    vi.setSystemTime(NOW);
    // The recount says MAX_INSTANCES are counted.
    await t.run(async (ctx) => {
      const live = await ctx.db.query("sidecarLive").first();
      await ctx.db.patch("sidecarLive", live!._id, { live: LIMITS.MAX_INSTANCES });
    });
    const before = await snapshot(t);
    const error = await refusal(sync(t, signed("one-too-many", payload({ hello: {} }))));
    expect(error.data).toEqual({ code: "limit_exceeded", message: "the deployment already has 1000 live instances" });
    expect(await snapshot(t)).toEqual(before);
    // A counted instance is no newcomer: its hello and its steady syncs go on.
    const again = await sync(t, signed("counted", payload({ hello: {} })));
    expect(await sync(t, signed("counted", payload({ heartbeat: again.heartbeat })))).toMatchObject({
      live: LIMITS.MAX_INSTANCES,
    });
    // One fewer counted: the newcomer is admitted.
    await t.run(async (ctx) => {
      const live = await ctx.db.query("sidecarLive").first();
      await ctx.db.patch("sidecarLive", live!._id, { live: LIMITS.MAX_INSTANCES - 1 });
    });
    expect(await sync(t, signed("one-too-many", payload({ hello: {} })))).toMatchObject({ resend: false });
  });
});

// ---------------------------------------------------------------------------------------------

describe("purgeExpired", () => {
  async function seed(t: T, instances: Array<{ instance: string; expiresAt: number; rows: number }>) {
    await t.run(async (ctx) => {
      for (const { instance, expiresAt, rows } of instances) {
        await enroll(ctx, instance, expiresAt);
        for (let i = 0; i < rows; i++) await ctx.db.insert("sidecarResults", storedRow(instance, `c${i}`));
      }
    });
  }

  /** The purge's runs scheduled to go on in the heartbeats (the first table it sweeps). */
  const scheduledRuns = (t: T) =>
    t.run(async (ctx) =>
      (await ctx.db.system.query("_scheduled_functions").collect())
        .filter((r) => r.name === "health:purgeExpired" && (r.args[0] as { table: number }).table === 0)
        .map((r) => ({
          name: r.name,
          args: [{ cursor: (r.args[0] as { cursor: string | null }).cursor }],
          state: r.state.kind,
        })),
    );

  test("deletes exactly the expired instances (expiresAt <= now): rows, registry and heartbeat", async () => {
    const t = setup();
    await seed(t, [
      { instance: "gone", expiresAt: NOW - 1, rows: 3 },
      { instance: "just-gone", expiresAt: NOW, rows: 0 },
      { instance: "live", expiresAt: NOW + 1, rows: 2 },
    ]);
    const before = await snapshot(t);
    const live = (docs: { instance?: string; _id: string }[], beat: string) =>
      docs.filter((d) => d.instance === "live" || d._id === beat);
    const liveBeat = before.instances.find((i) => i.instance === "live")!.heartbeat;
    // On to the other tables (more: true), which hold nothing to delete here.
    expect(await t.mutation(internal.health.purgeExpired, {})).toEqual({ deleted: 3 + 2 * 2, more: true });
    await t.finishAllScheduledFunctions(vi.runAllTimers);
    const after = await snapshot(t);
    expect(after).toEqual({
      ...EMPTY,
      instances: live(before.instances, liveBeat),
      heartbeats: live(before.heartbeats, liveBeat),
      results: live(before.results, liveBeat),
    });
    expect(after.heartbeats).toHaveLength(1);
    expect(await t.mutation(internal.health.purgeExpired, {})).toEqual({ deleted: 0, more: true });
    await t.finishAllScheduledFunctions(vi.runAllTimers);
    expect(await snapshot(t)).toEqual(after);
    expect(await scheduledRuns(t)).toEqual([]);
  });

  test("deletes expired orphan heartbeats, and nothing of the instance that moved on", async () => {
    const t = setup();
    await seed(t, [{ instance: "moved", expiresAt: NOW + MINUTE, rows: 2 }]);
    await t.run(async (ctx) => {
      for (const expiresAt of [NOW - HOUR, NOW - 1, NOW])
        await ctx.db.insert("sidecarHeartbeats", { seenAt: 0, expiresAt });
      await ctx.db.insert("sidecarHeartbeats", { seenAt: NOW, expiresAt: NOW + 1 }); // live, if orphan
    });
    const before = await snapshot(t);
    expect(await t.mutation(internal.health.purgeExpired, {})).toEqual({ deleted: 3, more: true });
    const after = await snapshot(t);
    expect(after.heartbeats.map((h) => h.expiresAt)).toEqual([NOW + MINUTE, NOW + 1]);
    expect(after.instances).toEqual(before.instances);
    expect(after.results).toEqual(before.results);
  });

  test("deletes at most PURGE_BATCH documents a run and reschedules itself until all are gone", async () => {
    const t = setup();
    await seed(t, [
      { instance: "old-1", expiresAt: NOW - 3, rows: 200 },
      { instance: "old-2", expiresAt: NOW - 2, rows: 200 },
      { instance: "old-3", expiresAt: NOW - 1, rows: 200 },
      { instance: "old-4", expiresAt: NOW - 1, rows: 200 },
      { instance: "old-5", expiresAt: NOW - 1, rows: 200 },
      { instance: "live", expiresAt: NOW + MINUTE, rows: 1 },
    ]);
    // old-1 and old-2 whole (2 x 202), then 96 of old-3's rows.
    expect(await t.mutation(internal.health.purgeExpired, {})).toEqual({ deleted: LIMITS.PURGE_BATCH, more: true });
    expect((await snapshot(t)).results).toHaveLength(1001 - (LIMITS.PURGE_BATCH - 4));
    expect((await snapshot(t)).instances.map((i) => i.instance)).toEqual(["old-3", "old-4", "old-5", "live"]);

    await t.finishAllScheduledFunctions(vi.runAllTimers);
    const { instances, heartbeats, results } = await snapshot(t);
    expect(instances.map((i) => i.instance)).toEqual(["live"]);
    expect(heartbeats.map((h) => h._id)).toEqual([instances[0].heartbeat]);
    expect(results.map((r) => r.instance)).toEqual(["live"]);
    // Out of budget in the first page: that page again (it starts at null), twice (1010 documents).
    expect(await scheduledRuns(t)).toEqual([
      { name: "health:purgeExpired", args: [{ cursor: null }], state: "success" },
      { name: "health:purgeExpired", args: [{ cursor: null }], state: "success" },
    ]);
  });

  test("walks the heartbeats page by page: a cursor carries it past PURGE_BATCH live ones", async () => {
    const t = setup();
    // The oldest PURGE_BATCH + 100 heartbeats are live; the expired ones come after them.
    const live = Array.from({ length: LIMITS.PURGE_BATCH + 100 }, (_, i) => ({
      instance: `live-${i}`,
      expiresAt: NOW + HOUR,
      rows: 0,
    }));
    await seed(t, [
      ...live,
      { instance: "old-1", expiresAt: NOW - 1, rows: 300 },
      { instance: "old-2", expiresAt: NOW - 1, rows: 300 },
    ]);
    // The first page holds no expired heartbeat: nothing deleted, on to the next page.
    expect(await t.mutation(internal.health.purgeExpired, {})).toEqual({ deleted: 0, more: true });
    const [first] = await scheduledRuns(t);
    const cursor = (first.args[0] as { cursor: string | null }).cursor;
    expect(typeof cursor).toBe("string");

    await t.finishAllScheduledFunctions(vi.runAllTimers);
    const { instances, heartbeats, results } = await snapshot(t);
    expect(instances).toHaveLength(live.length);
    expect(instances.some((i) => i.instance.startsWith("old"))).toBe(false);
    expect(heartbeats).toHaveLength(live.length);
    expect(results).toEqual([]);
    // Second page: old-1 whole (302), 198 rows of old-2, out of budget: the same page again, which
    // ends the walk (old-2's last 102 rows, its registry and heartbeat: 104 documents).
    expect(await scheduledRuns(t)).toEqual([
      { name: "health:purgeExpired", args: [{ cursor }], state: "success" },
      { name: "health:purgeExpired", args: [{ cursor }], state: "success" },
    ]);
  });

  test("out of budget in a page that is not the last, it goes on from that page's start", async () => {
    const t = setup();
    const live = Array.from({ length: LIMITS.PURGE_BATCH }, (_, i) => ({
      instance: `live-${i}`,
      expiresAt: NOW + HOUR,
      rows: 0,
    }));
    await seed(t, [
      { instance: "old-1", expiresAt: NOW - 1, rows: 300 },
      { instance: "old-2", expiresAt: NOW - 1, rows: 300 },
      ...live,
    ]);
    // old-1 whole (302), 198 of old-2's rows: the rest of the first page is still to be seen.
    expect(await t.mutation(internal.health.purgeExpired, {})).toEqual({ deleted: LIMITS.PURGE_BATCH, more: true });
    await t.finishAllScheduledFunctions(vi.runAllTimers);
    const { instances, heartbeats, results } = await snapshot(t);
    expect(instances).toHaveLength(live.length);
    expect(heartbeats).toHaveLength(live.length);
    expect(results).toEqual([]);
    // The first page again (old-2's last 104 documents), then the page after it (one live heartbeat).
    const runs = await scheduledRuns(t);
    expect(runs.map((r) => r.args)).toEqual([[{ cursor: null }], [{ cursor: expect.any(String) }]]);
    expect(runs.map((r) => r.state)).toEqual(["success", "success"]);
  });

  test("the cron's {} and a cursor of null both start at the first page", async () => {
    const t = setup();
    await seed(t, [{ instance: "gone", expiresAt: NOW - 1, rows: 1 }]);
    expect(await t.mutation(internal.health.purgeExpired, { cursor: null })).toEqual({ deleted: 3, more: true });
  });

  test("is internal, and crons.ts runs it hourly at minute 7", () => {
    expect(purgeExpired.isInternal).toBe(true);
    // @ts-expect-error purgeExpired is not part of the public api
    void api.health.purgeExpired;
    expect(crons.crons).toEqual({
      "purge expired health-sidecar instances": {
        name: "health:purgeExpired",
        args: [{}],
        schedule: { type: "hourly", minuteUTC: 7 },
      },
    });
  });
});

describe("ping and limits", () => {
  test("ping takes no arguments, reads nothing and returns null, even without the secret", async () => {
    const t = setup({ documentsRead: 0, databaseQueries: 0 });
    await t.run((ctx) => ctx.db.insert("sidecarHeartbeats", { seenAt: NOW, expiresAt: NOW }));
    vi.stubEnv("HEALTH_SIDECAR_SECRET", undefined);
    expect(await t.query(api.health.ping, {})).toBeNull();
    // The same limits refuse a query that reads one document.
    await expect(t.run((ctx) => ctx.db.query("sidecarHeartbeats").first())).rejects.toThrow(/too many|too much/i);
  });

  test("LIMITS are the spec's", () => {
    expect(LIMITS).toEqual({
      MAX_CHECKS: 200,
      MAX_INSTANCES: 1000,
      MAX_BODY: 1_000_000,
      MAX_OUTPUT: 1024,
      TIMESTAMP_WINDOW_MS: 30_000,
      PURGE_BATCH: 500,
      MIN_TTL_MS: 10_000,
      MAX_TTL_MS: 86_400_000,
      TTL_CLAMP_MS: 900_000,
      MIN_PERIOD_MS: 1_000,
      MAX_PERIOD_MS: 300_000,
      JOINS_PER_MINUTE: 200,
      JOIN_SHARDS: 16,
    });
  });
});
