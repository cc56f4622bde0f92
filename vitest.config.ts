import { defineConfig } from "vitest/config";

export default defineConfig({
  test: {
    // convex-test runs under plain Node (no edge-runtime needed) when given its modules.
    environment: "node",
    include: ["convex/**/*.test.ts", "dev/convex-local/**/*.test.ts"],
    server: { deps: { inline: ["convex-test"] } },
  },
});
