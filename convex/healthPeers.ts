/**
 * Peers (issue 17): where the instances' sidecars answer each other's witness questions while
 * Convex itself is down. A hello that carries `advertise` writes the instance into a small ring,
 * `sidecarPeers`, at the slot its name hashes to (PEER_SLOTS slots: a bigger fleet keeps the
 * most recent hello of each slot); its last sync (`leaving`) takes it out, and the hourly sweep
 * takes out the ones whose heartbeat is gone. A hello's answer, a sync that asks (`wantPeers`)
 * and one sync answer of each instance per PEER_REFRESH_MS name up to MAX_PEERS live others,
 * read from a random slot on: an index range of at most PEERS_READ small documents (written
 * only by hellos and leaves) and their heartbeats. Never a scan of the fleet, and a steady-state
 * sync reads none of it. An instance killed without a last sync stays in the ring until the
 * sweep or another hello takes its slot, but is not named once it is no longer counted.
 */
import { v } from "convex/values";
import type { Id } from "./_generated/dataModel";
import type { MutationCtx } from "./_generated/server";
import { counted, shardOf } from "./healthCounts";

export const PEER_SLOTS = 64;
export const PEER_REFRESH_MS = 60 * 60_000; // a sync answer reads the ring once per window (health.ts): about 2.5 KB in a fleet
export const MAX_PEERS = 5;
const PEERS_READ = 8;

export const peerAnswer = v.object({ instance: v.string(), url: v.string() });
export type PeerAnswer = { instance: string; url: string };

async function slotOf(ctx: MutationCtx, slot: number) {
  return await ctx.db
    .query("sidecarPeers")
    .withIndex("by_slot", (q) => q.eq("slot", slot))
    .first();
}

/** A hello's `advertise`: the instance takes its slot (one write). */
export async function rememberPeer(
  ctx: MutationCtx,
  instance: string,
  url: string,
  heartbeat: Id<"sidecarHeartbeats">,
): Promise<void> {
  const slot = shardOf(instance, PEER_SLOTS);
  const entry = await slotOf(ctx, slot);
  if (entry === null) await ctx.db.insert("sidecarPeers", { slot, instance, url, heartbeat });
  else if (entry.instance !== instance || entry.url !== url || entry.heartbeat !== heartbeat) {
    await ctx.db.patch("sidecarPeers", entry._id, { instance, url, heartbeat });
  }
}

/** A last sync: the instance leaves its slot, if it still holds it. */
export async function forgetPeer(ctx: MutationCtx, instance: string): Promise<void> {
  const entry = await slotOf(ctx, shardOf(instance, PEER_SLOTS));
  if (entry !== null && entry.instance === instance) await ctx.db.delete("sidecarPeers", entry._id);
}

/**
 * Up to MAX_PEERS other live instances, from a random slot on (wrapping around): at most
 * PEERS_READ entries read, and their heartbeats (an entry whose instance is no longer counted
 * is skipped). Read on a hello, on a sync asking for peers, and once per window (health.ts):
 * the heartbeat reads are rare, so they rarely meet the peers' own syncs' patches.
 */
export async function peersFor(ctx: MutationCtx, instance: string, now: number): Promise<PeerAnswer[]> {
  const start = Math.floor(Math.random() * PEER_SLOTS);
  const after = await ctx.db
    .query("sidecarPeers")
    .withIndex("by_slot", (q) => q.gte("slot", start))
    .take(PEERS_READ);
  const before =
    after.length < PEERS_READ
      ? await ctx.db
          .query("sidecarPeers")
          .withIndex("by_slot", (q) => q.lt("slot", start))
          .take(PEERS_READ - after.length)
      : [];
  const peers: PeerAnswer[] = [];
  for (const entry of [...after, ...before]) {
    if (entry.instance === instance || peers.length >= MAX_PEERS) continue;
    const beat = await ctx.db.get("sidecarHeartbeats", entry.heartbeat);
    if (beat !== null && counted(beat, now)) peers.push({ instance: entry.instance, url: entry.url });
  }
  return peers;
}
