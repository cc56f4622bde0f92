/**
 * Peers (issue 17): where the instances' sidecars answer each other's witness questions while
 * Convex itself is down. A hello that carries `advertise` writes the instance into a small ring,
 * `sidecarPeers`, at the slot its name hashes to (PEER_SLOTS slots: a bigger fleet keeps the
 * most recent hello of each slot); its last sync (`leaving`) takes it out, and the hourly sweep
 * takes out the ones whose heartbeat is gone. A hello's answer, and one sync answer of each
 * instance per PEER_REFRESH_MS, name up to MAX_PEERS of them, read from a random slot on (an index range of at most PEERS_READ small documents, written
 * only by hellos and leaves: never a scan of the fleet, and no read of a heartbeat that every
 * sync patches). An instance killed without a last sync stays in the ring until the sweep or
 * another hello takes its slot: its silence counts as no answer on the asker's side.
 */
import { v } from "convex/values";
import type { Id } from "./_generated/dataModel";
import type { MutationCtx } from "./_generated/server";
import { shardOf } from "./healthCounts";

export const PEER_SLOTS = 64;
export const PEER_REFRESH_MS = 5 * 60_000; // a sync answer reads the ring once per window (health.ts)
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

/** Up to MAX_PEERS other instances, from a random slot on (wrapping around), at most PEERS_READ read. */
export async function peersFor(ctx: MutationCtx, instance: string): Promise<PeerAnswer[]> {
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
  return [...after, ...before]
    .filter((entry) => entry.instance !== instance)
    .slice(0, MAX_PEERS)
    .map(({ instance, url }) => ({ instance, url }));
}
