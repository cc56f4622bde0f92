// A real Mastra server (local stand-in) for health-sidecar's tests and `make demo`.
//
// @mastra/core's Mastra with one agent, served by @mastra/deployer's createNodeServer
// (the same server `mastra build` produces), bound to 127.0.0.1 only.
// Registering the agent needs no API key; the model is never called unless a client
// asks the agent to generate.

// Must be set before Mastra is imported: no anonymous usage telemetry, no network.
process.env.MASTRA_TELEMETRY_DISABLED = "1";

const { Mastra } = await import("@mastra/core/mastra");
const { Agent } = await import("@mastra/core/agent");
const { InMemoryStore } = await import("@mastra/core/storage");
const { createNodeServer } = await import("@mastra/deployer/server");

const host = "127.0.0.1";
const rawPort = process.env.PORT ?? "4111";
const port = Number(rawPort);
if (!Number.isInteger(port) || port < 0 || port > 65535) {
  console.error(`mastra-local: invalid PORT ${JSON.stringify(rawPort)}`);
  process.exit(2);
}

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
  server: { host, port },
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
