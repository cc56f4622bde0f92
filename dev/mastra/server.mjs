// A real Mastra server (local stand-in) for health-sidecar's tests and `make demo`.
//
// @mastra/core's Mastra with one agent, served by @mastra/deployer's createNodeServer
// (the same server `mastra build` produces), bound to 127.0.0.1 only.
// Registering the agent needs no API key; the model is never called unless a client
// asks the agent to generate.

// Must be set before Mastra is imported: no anonymous usage telemetry, no network.
process.env.MASTRA_TELEMETRY_DISABLED = "1";

// 127.0.0.1 only: without server.host Mastra binds every interface.
const host = "127.0.0.1";
const rawPort = process.env.PORT || "4111";
const port = Number(rawPort);
// PORT=0 picks a free port; the "listening" line below shows which.
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`mastra-local: invalid PORT ${JSON.stringify(rawPort)}`);
  process.exit(2);
}

const { Mastra } = await import("@mastra/core/mastra");
const { Agent } = await import("@mastra/core/agent");
const { InMemoryStore } = await import("@mastra/core/storage");
const { createNodeServer } = await import("@mastra/deployer/server");

const assistant = new Agent({
  id: "assistant",
  name: "assistant",
  description: "Demo agent of the health-sidecar local Mastra server.",
  instructions: "You are a helpful assistant. Answer briefly.",
  model: "openai/gpt-4o-mini",
});

const mastra = new Mastra({
  agents: { assistant },
  // Explicit in-memory storage: nothing is written to disk, and no
  // "No `storage` configured" warning on stderr.
  storage: new InMemoryStore({ id: "mastra-local" }),
  // drainTimeout: on SIGINT/SIGTERM, wait at most 1 s for in-flight requests
  // (Mastra's default is 5 s) before force-closing connections and exiting 0.
  server: { host, port, drainTimeout: 1000 },
});

// A taken port surfaces as an uncaught 'error' event of the HTTP server; say so in
// one line instead of a stack trace. Anything else uncaught: print it, exit 1.
process.on("uncaughtException", (err) => {
  if (err?.code === "EADDRINUSE") {
    console.error(`mastra-local: cannot listen on ${host}:${port}: address already in use`);
  } else {
    console.error(err);
  }
  process.exit(1);
});

// createNodeServer installs SIGINT/SIGTERM handlers that close the server,
// shut Mastra down and exit(0).
const server = await createNodeServer(mastra, { tools: {}, studio: false });

const announce = () => {
  const addr = server.address();
  const actualPort = addr && typeof addr === "object" ? addr.port : port;
  console.log(`mastra-local listening on http://${host}:${actualPort} (pid ${process.pid})`);
};
if (server.listening) announce();
else server.once("listening", announce);
