/**
 * The merge steps of docs/convex.md, followed literally on a sample app that already has its
 * own `convex/` folder: a schema with the scaling guide's `cache` table, a cron and a query of
 * its own. The steps are read from docs/convex.md, so the docs and this test cannot drift apart.
 */
import { execFileSync } from "node:child_process";
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";
import { convexTest } from "convex-test";
import { anyApi, type SchemaDefinition, type GenericSchema } from "convex/server";
import { afterAll, beforeAll, describe, expect, test, vi } from "vitest";
import { sign } from "./test.setup";

const REPO = resolve(dirname(fileURLToPath(import.meta.url)), "..");
const DOC = "docs/convex.md";
const SECTION = "## Merging into an app's `convex/` folder";
const SECRET = "merge-test-secret";
const OPERATOR_SECRET = "merge-test-operator-secret";

/** The sample app, in the scaling guide's style (single quotes), before the merge. */
const SAMPLE_APP: Record<string, string> = {
  "package.json": JSON.stringify({
    name: "sample-app",
    private: true,
    type: "module",
    dependencies: { convex: "^1.31.0" },
  }),
  "convex/schema.ts": `import { defineSchema, defineTable } from 'convex/server';
import { v } from 'convex/values';

export default defineSchema({
  cache: defineTable({
    key: v.string(),
    value: v.any(),
    expiresAt: v.number(),
  }).index('by_key', ['key']),
  messages: defineTable({
    author: v.string(),
    body: v.string(),
  }).index('by_author', ['author']),
});
`,
  "convex/cache.ts": `import { v } from 'convex/values';
import { internalMutation, mutation, query } from './_generated/server';

export const get = query({
  args: { key: v.string(), now: v.number() },
  handler: async (ctx, args) => {
    const cached = await ctx.db
      .query('cache')
      .withIndex('by_key', (q) => q.eq('key', args.key))
      .first();
    if (!cached || cached.expiresAt < args.now) return null;
    return cached.value;
  },
});

export const set = mutation({
  args: { key: v.string(), value: v.any(), ttlSeconds: v.number() },
  handler: async (ctx, args) => {
    const expiresAt = Date.now() + args.ttlSeconds * 1000;
    const existing = await ctx.db
      .query('cache')
      .withIndex('by_key', (q) => q.eq('key', args.key))
      .first();
    if (existing) await ctx.db.patch('cache', existing._id, { value: args.value, expiresAt });
    else await ctx.db.insert('cache', { key: args.key, value: args.value, expiresAt });
  },
});

export const purgeExpired = internalMutation({
  args: {},
  handler: async (ctx) => {
    const expired = await ctx.db.query('cache').filter((q) => q.lt(q.field('expiresAt'), Date.now())).take(100);
    for (const entry of expired) await ctx.db.delete('cache', entry._id);
  },
});
`,
  "convex/messages.ts": `import { v } from 'convex/values';
import { mutation, query } from './_generated/server';

export const send = mutation({
  args: { author: v.string(), body: v.string() },
  handler: async (ctx, args) => {
    await ctx.db.insert('messages', args);
  },
});

export const byAuthor = query({
  args: { author: v.string() },
  handler: async (ctx, args) => {
    const messages = await ctx.db
      .query('messages')
      .withIndex('by_author', (q) => q.eq('author', args.author))
      .collect();
    return messages.map((m) => m.body);
  },
});
`,
  "convex/crons.ts": `import { cronJobs } from 'convex/server';
import { internal } from './_generated/api';

const crons = cronJobs();

crons.interval('purge expired cache entries', { minutes: 10 }, internal.cache.purgeExpired, {});

export default crons;
`,
};

interface Block {
  lang: string;
  code: string;
  intro: string; // the line before the block
}

/** The fenced blocks of the docs' merge section, each with the line that introduces it. */
function mergeBlocks(): Block[] {
  const doc = readFileSync(join(REPO, DOC), "utf8");
  const start = doc.indexOf(`${SECTION}\n`);
  expect(start, `${DOC} has a section "${SECTION}"`).toBeGreaterThanOrEqual(0);
  const rest = doc.slice(start + SECTION.length);
  const section = rest.slice(0, rest.search(/^#/m));
  return [...section.matchAll(/([^\n]+)\n\n```(\w+)\n([\s\S]*?)```/g)].map(([, intro, lang, code]) => ({
    intro: intro.trim(),
    lang,
    code,
  }));
}

/** Applies one ```ts block where its intro line says: "In `FILE`, at the top" or "In `FILE`, after `ANCHOR`". */
function applyTs(app: string, { intro, code }: Block): void {
  const where = /^In `([^`]+)`, (?:(at the top)|after `([^`]+)`)/.exec(intro);
  if (!where) throw new Error(`${DOC}: a ts block whose intro names no file and place: ${intro}`);
  const [, file, atTop, anchor] = where;
  const path = join(app, file);
  const lines = readFileSync(path, "utf8").split("\n");
  const added = code.replace(/\n$/, "").split("\n");
  if (atTop) {
    const missing = added.filter((line) => !alreadyImported(lines, line));
    const lastImport = lines.findLastIndex((line) => line.startsWith("import "));
    lines.splice(lastImport + 1, 0, ...missing);
  } else {
    const at = lines.filter((line) => line.includes(anchor));
    expect(at, `exactly one line of ${file} contains ${anchor}`).toHaveLength(1);
    lines.splice(lines.indexOf(at[0]) + 1, 0, ...added);
  }
  writeFileSync(path, lines.join("\n"));
}

/** Whether `lines` already import every name of `importLine` from its module (either quote). */
function alreadyImported(lines: string[], importLine: string): boolean {
  const parsed = /^import \{([^}]*)\} from ["']([^"']+)["'];?$/.exec(importLine);
  if (!parsed) throw new Error(`${DOC}: not a named import: ${importLine}`);
  const names = (list: string) => list.split(",").map((name) => name.trim());
  const existing = lines
    .map((line) => /^import \{([^}]*)\} from ["']([^"']+)["']/.exec(line))
    .filter((match) => match !== null && match[2] === parsed[2])
    .flatMap((match) => names(match![1]));
  return names(parsed[1]).every((name) => existing.includes(name));
}

function run(command: string, args: string[], cwd: string, env: Record<string, string> = {}): void {
  try {
    execFileSync(command, args, { cwd, env: { ...process.env, ...env }, encoding: "utf8", stdio: "pipe" });
  } catch (error) {
    const { stdout = "", stderr = "" } = error as { stdout?: string; stderr?: string };
    throw new Error(`${[command, ...args].join(" ")} failed:\n${stdout}${stderr}`);
  }
}

/** The app's modules for convex-test, keyed by absolute path (the `_generated` path marks the root). */
function appModules(convexDir: string): Record<string, () => Promise<unknown>> {
  const files = readdirSync(convexDir, { recursive: true, encoding: "utf8" }).filter(
    (file) => /\.(ts|js)$/.test(file) && !file.endsWith(".d.ts"),
  );
  return Object.fromEntries(
    files.map((file) => [
      join(convexDir, file),
      () => import(/* @vite-ignore */ pathToFileURL(join(convexDir, file)).href),
    ]),
  );
}

describe("merging the functions into an app's convex/ folder (docs/convex.md steps)", () => {
  let app: string;
  let startedAt: number;

  beforeAll(() => {
    startedAt = performance.now();
    app = mkdtempSync(join(tmpdir(), "health-sidecar-merge-"));
    for (const [file, text] of Object.entries(SAMPLE_APP)) {
      mkdirSync(dirname(join(app, file)), { recursive: true });
      writeFileSync(join(app, file), text);
    }
    symlinkSync(join(REPO, "node_modules"), join(app, "node_modules"), "dir");
  });

  afterAll(() => {
    rmSync(app, { recursive: true, force: true });
    console.info(`merge test: ${((performance.now() - startedAt) / 1000).toFixed(1)} s`);
  });

  test("the documented steps apply, generate, typecheck and run", { timeout: 60_000 }, async () => {
    const blocks = mergeBlocks();
    expect(blocks.map((b) => b.lang)).toEqual(["sh", "ts", "ts", "ts", "ts"]);
    for (const block of blocks) {
      if (block.lang === "sh") run("bash", ["-euo", "pipefail", "-c", block.code], app, { SIDECAR: REPO });
      else applyTs(app, block);
    }
    const schemaText = readFileSync(join(app, "convex/schema.ts"), "utf8");
    expect(schemaText).toContain("...healthTables,");
    expect(readFileSync(join(app, "convex/crons.ts"), "utf8").match(/^import \{ internal \}/gm)).toHaveLength(1);

    // Offline codegen in the app (as the app's own `npx convex codegen` would), then tsc.
    run(
      process.execPath,
      ["node_modules/convex/bin/main.js", "codegen", "--system-udfs", "--typecheck", "disable"],
      app,
    );
    writeFileSync(join(app, "convex/tsconfig.json"), readFileSync(join(REPO, "convex/tsconfig.json")));
    run(process.execPath, [join(REPO, "node_modules/typescript/bin/tsc"), "--noEmit", "-p", join(app, "convex")], app);

    // The merged functions, through convex-test with the merged schema.
    const schema = (await import(/* @vite-ignore */ pathToFileURL(join(app, "convex/schema.ts")).href))
      .default as SchemaDefinition<GenericSchema, true>;
    expect(Object.keys(schema.tables).sort()).toEqual([
      "cache",
      "messages",
      "sidecarCensus",
      "sidecarCounters",
      "sidecarDrainLog",
      "sidecarFailing",
      "sidecarHeartbeats",
      "sidecarInstances",
      "sidecarJoins",
      "sidecarLive",
      "sidecarMailbox",
      "sidecarNonces",
      "sidecarPeers",
      "sidecarRecount",
      "sidecarResults",
      "sidecarShared",
      "sidecarSharedStatus",
      "sidecarVerdicts",
    ]);
    const crons = (await import(/* @vite-ignore */ pathToFileURL(join(app, "convex/crons.ts")).href)).default;
    expect(Object.keys(crons.crons).sort()).toEqual([
      "purge expired cache entries",
      "purge expired health-sidecar instances",
    ]);

    vi.stubEnv("HEALTH_SIDECAR_SECRET", SECRET);
    vi.stubEnv("HEALTH_SIDECAR_OPERATOR_SECRET", OPERATOR_SECRET);
    try {
      const t = convexTest({ schema, modules: appModules(join(app, "convex")), transactionLimits: true });
      const ts = Date.now();
      const body = JSON.stringify({
        version: "0.2.0",
        ttlMs: 300_000,
        hello: { mastra: "3f2a9c0d1e2b4a5c" },
        results: [],
      });
      const answer = await t.mutation(anyApi.health.sync, {
        instance: "web-1",
        ts,
        body,
        sig: sign(SECRET, "health:sync", "web-1", ts, body),
      });
      expect(answer).toMatchObject({ written: 0, resend: false, warm: null, heartbeat: expect.any(String) });
      expect(await t.query(anyApi.health.ping, {})).toBeNull();
      // The fleet functions, reaching the helper modules copied beside health.ts.
      const signedAs = (path: string, payload: object) => {
        const body = JSON.stringify(payload);
        return { instance: "cli", ts, body, sig: sign(OPERATOR_SECRET, path, "cli", ts, body) };
      };
      const nonce = "0123456789abcdef0123456789abcdef";
      const drain = { action: "drain", instances: ["web-1"], reason: "merge test", by: "ci", forMs: null, nonce };
      expect(await t.mutation(anyApi.health.drain, signedAs("health:drain", drain))).toEqual({ instances: ["web-1"] });
      expect(await t.query(anyApi.health.fleet, signedAs("health:fleet", {}))).toMatchObject({
        instances: [{ instance: "web-1", drain: { reason: "merge test", by: "ci", key: "operator" } }],
      });

      // The app's own tables and functions still work beside them.
      await t.mutation(anyApi.cache.set, { key: "greeting", value: { text: "hi" }, ttlSeconds: 60 });
      expect(await t.query(anyApi.cache.get, { key: "greeting", now: Date.now() })).toEqual({ text: "hi" });
      await t.mutation(anyApi.messages.send, { author: "ada", body: "hello" });
      expect(await t.query(anyApi.messages.byAuthor, { author: "ada" })).toEqual(["hello"]);
      const counts = await t.run(async (ctx) => ({
        cache: (await ctx.db.query("cache").collect()).length,
        sidecarInstances: (await ctx.db.query("sidecarInstances").collect()).length,
        sidecarHeartbeats: (await ctx.db.query("sidecarHeartbeats").collect()).length,
        sidecarDrainLog: (await ctx.db.query("sidecarDrainLog").collect()).length,
      }));
      expect(counts).toEqual({ cache: 1, sidecarInstances: 1, sidecarHeartbeats: 1, sidecarDrainLog: 1 });
    } finally {
      vi.unstubAllEnvs();
    }
  });
});
