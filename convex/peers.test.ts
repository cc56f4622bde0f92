import { describe, expect, test, vi } from "vitest";
import { internal } from "./_generated/api";
import { MAX_PEERS, PEER_REFRESH_MS, PEER_SLOTS } from "./healthPeers";
import { shardOf } from "./healthCounts";
import {
  atNow,
  HOUR,
  MINUTE,
  NOW,
  heartbeatOf,
  hello,
  payload,
  refusal,
  setup,
  signed,
  sync,
  type T,
} from "./test.setup";

atNow();

const url = (instance: string) => `http://${instance}:8099`;

/** Instances that said hello with their advertised URL; the last one's answer. */
async function join(t: T, names: string[]) {
  let answer = null;
  for (const name of names) {
    answer = await sync(t, signed(name, payload({ hello: hello(["convex"]), advertise: url(name), ttlMs: TTL, periodMs: MINUTE })));
  }
  return answer;
}

const steady = async (t: T, name: string) =>
  await sync(t, signed(name, payload({ heartbeat: await heartbeatOf(t, name), ttlMs: TTL, periodMs: MINUTE })));
const TTL = 15 * MINUTE; // the longest kept (TTL_CLAMP_MS): shorter than a window of the ring

/**
 * One second into the ring's next refresh window; on the way, `alive` sync every 10 minutes
 * (in the current window: none of them reads the ring) so that their heartbeats outlive the TTL.
 */
async function nextWindow(t: T, alive: string[]) {
  const boundary = (Math.floor(Date.now() / PEER_REFRESH_MS) + 1) * PEER_REFRESH_MS;
  while (Date.now() + 10 * MINUTE < boundary) {
    vi.setSystemTime(Date.now() + 10 * MINUTE);
    for (const name of alive) expect((await steady(t, name)).peers).toBeUndefined();
  }
  vi.setSystemTime(boundary + 1000);
}

const ring = (t: T) => t.run(async (ctx) => await ctx.db.query("sidecarPeers").collect());

/** Names that hash to distinct slots of the ring (so none takes another's). */
function distinctNames(n: number): string[] {
  const names: string[] = [];
  const used = new Set<number>();
  for (let i = 0; names.length < n; i++) {
    const slot = shardOf(`web-${i}`, PEER_SLOTS);
    if (!used.has(slot)) {
      used.add(slot);
      names.push(`web-${i}`);
    }
  }
  return names;
}

describe("peers", () => {
  test("a hello's advertise joins the ring; answers name the others, never the caller", async () => {
    const t = setup();
    const [a, b, c] = distinctNames(3);
    expect((await join(t, [a]))!.peers).toBeUndefined(); // a hello's answer reads the ring: none yet
    expect((await join(t, [b]))!.peers).toEqual([{ instance: a, url: url(a) }]);
    await join(t, [c]);
    await nextWindow(t, [a, b, c]);
    await steady(t, b); // still live a window later
    await steady(t, c);
    const answer = await steady(t, a);
    expect(answer.peers).toEqual(
      expect.arrayContaining([
        { instance: b, url: url(b) },
        { instance: c, url: url(c) },
      ]),
    );
    expect(answer.peers).toHaveLength(2);
    expect((await ring(t)).map((e) => e.instance).sort()).toEqual([a, b, c].sort());
  });

  test("at most five, rotating over the ring from a random slot", async () => {
    const t = setup();
    const names = distinctNames(12);
    await join(t, names);
    const me = names[0];
    const seen = new Set<string>();
    const random = vi.spyOn(Math, "random");
    for (let i = 0; i < 16; i++) {
      random.mockReturnValue(i / 16);
      const answer = await sync(
        t,
        signed(me, payload({ heartbeat: await heartbeatOf(t, me), ttlMs: TTL, wantPeers: true })),
      );
      expect(answer.peers!.length).toBeLessThanOrEqual(MAX_PEERS);
      expect(answer.peers!.length).toBe(MAX_PEERS);
      for (const peer of answer.peers!) {
        expect(peer.instance).not.toBe(me);
        seen.add(peer.instance);
      }
    }
    random.mockRestore();
    expect(seen.size).toBe(names.length - 1); // every other instance named by some answer
  });

  test("a hello takes its own slot again (one entry per name); a last sync leaves the ring", async () => {
    const t = setup();
    const [a, b] = distinctNames(2);
    await join(t, [a, b]);
    await sync(t, signed(a, payload({ hello: hello(["convex"]), advertise: "https://a.example:8443", ttlMs: TTL })));
    const entries = await ring(t);
    expect(entries).toHaveLength(2);
    expect(entries.find((e) => e.instance === a)!.url).toBe("https://a.example:8443");
    const left = await sync(t, signed(b, payload({ heartbeat: await heartbeatOf(t, b), leaving: true, ttlMs: TTL })));
    expect(left.peers).toBeUndefined();
    expect((await ring(t)).map((e) => e.instance)).toEqual([a]);
  });

  test("a steady sync reads the ring once per window only: absent otherwise (keep what you have)", async () => {
    const t = setup();
    const [a, b] = distinctNames(2);
    await join(t, [a, b]);
    await nextWindow(t, [a, b]); // every sync on the way: same window, not read
    await steady(t, b);
    expect((await steady(t, a)).peers).toEqual([{ instance: b, url: url(b) }]); // a new window
    vi.setSystemTime(Date.now() + 500);
    expect((await steady(t, a)).peers).toBeUndefined(); // same window: not read
    await nextWindow(t, [a, b]);
    await steady(t, b);
    expect((await steady(t, a)).peers).toEqual([{ instance: b, url: url(b) }]);
  });

  test("a sync that asks (wantPeers: it knows none yet) reads the ring at once", async () => {
    const t = setup();
    const [a, b] = distinctNames(2);
    await join(t, [a, b]); // a's hello answered none: b was not there yet
    const asked = await sync(
      t,
      signed(a, payload({ heartbeat: await heartbeatOf(t, a), ttlMs: TTL, wantPeers: true })),
    );
    expect(asked.peers).toEqual([{ instance: b, url: url(b) }]);
    expect((await steady(t, a)).peers).toBeUndefined(); // not asked, same window
    const error = await refusal(
      sync(t, signed(a, payload({ heartbeat: await heartbeatOf(t, a), ttlMs: TTL, wantPeers: "yes" }))),
    );
    expect(error.data.message).toContain("body.wantPeers");
  });

  test("an instance the live count says is alone asks in vain: the ring is not read (the bandwidth budget)", async () => {
    const t = setup();
    const [a] = distinctNames(1);
    await join(t, [a]);
    await t.finishAllScheduledFunctions(vi.runAllTimers); // the recount: live 1, this instance
    const readsOfRing = async () => {
      const answer = await sync(
        t,
        signed(a, payload({ heartbeat: await heartbeatOf(t, a), ttlMs: TTL, periodMs: MINUTE, wantPeers: true })),
      );
      return answer;
    };
    const peersRead = vi.spyOn(Math, "random"); // peersFor draws its starting slot: one draw per ring read
    const asked = await readsOfRing();
    expect(asked).toMatchObject({ live: 1 });
    expect(asked.peers).toBeUndefined();
    expect(peersRead).not.toHaveBeenCalled();
    // Once another instance is counted, asking reads the ring again.
    const [, b] = distinctNames(2);
    await join(t, [b]);
    await t.finishAllScheduledFunctions(vi.runAllTimers);
    expect((await readsOfRing()).peers).toEqual([{ instance: b, url: url(b) }]);
    expect(peersRead).toHaveBeenCalled();
    peersRead.mockRestore();
  });

  test("without advertise nothing joins the ring (an older sidecar)", async () => {
    const t = setup();
    await sync(t, signed("old", payload({ hello: hello(["convex"]) })));
    expect(await ring(t)).toEqual([]);
  });

  test.each([
    ["ftp://a:21"],
    ["http://user@a:8099"],
    ["http://a:8099/?token=x"],
    ["http://a b:8099"],
    [`http://${"a".repeat(500)}`],
    [42],
    ["http://"],
  ])("a bad advertise %s is refused invalid_argument and changes nothing", async (bad) => {
    const t = setup();
    const error = await refusal(sync(t, signed("a", payload({ hello: hello(["convex"]), advertise: bad }))));
    expect(error.data.code).toBe("invalid_argument");
    expect(error.data.message).toContain("body.advertise");
    expect(await ring(t)).toEqual([]);
  });

  test("an entry whose instance is no longer counted is not named", async () => {
    const t = setup();
    const [a, b, c] = distinctNames(3);
    await join(t, [a, b, c]);
    vi.setSystemTime(Date.now() + 10 * MINUTE); // b and c sent no sync: past their liveUntil
    await steady(t, c);
    const answer = await sync(
      t,
      signed(a, payload({ heartbeat: await heartbeatOf(t, a), ttlMs: TTL, wantPeers: true })),
    );
    expect(answer.peers).toEqual([{ instance: c, url: url(c) }]);
  });

  test("the sweep takes out the entries whose instance is gone", async () => {
    const t = setup();
    const [a, b] = distinctNames(2);
    await join(t, [a]);
    vi.setSystemTime(NOW + 2 * HOUR); // a's heartbeat expired (TTL 15 min)
    await join(t, [b]);
    await t.mutation(internal.health.purgeExpired, {});
    await t.finishAllScheduledFunctions(vi.runAllTimers);
    expect((await ring(t)).map((e) => e.instance)).toEqual([b]);
  });
});
