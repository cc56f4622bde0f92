/// <reference types="vite/client" />
/**
 * Shared by the tests (Convex skips files with more than one dot in their name, so this one is
 * never deployed): the function modules for convex-test, and a signer that follows the spec with
 * node's crypto, independent of the Web Crypto verifier in health.ts.
 */
import { createHmac } from "node:crypto";

export const modules = import.meta.glob("./**/*.*s");

/** Lowercase hex HMAC-SHA256 of a signed call, keyed by the UTF-8 bytes of `secret`. */
export function sign(secret: string, path: string, instance: string, ts: number, body: string): string {
  const message = `health-sidecar/1\n${path}\n${instance}\n${String(ts)}\n${body}`;
  return createHmac("sha256", Buffer.from(secret, "utf8")).update(message, "utf8").digest("hex");
}
