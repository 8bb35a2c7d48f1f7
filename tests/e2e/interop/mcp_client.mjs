// An MCP client built on the official TypeScript SDK (@modelcontextprotocol/sdk), the client
// that MCP Inspector's 1.x line and most desktop and IDE clients run. The Python tests drive it
// to see the server the way those clients see it.
//
//   MCP_BEARER_TOKEN=<token> NODE_CLIENT_DIR=<dir with node_modules> \
//     node mcp_client.mjs <server url> < plan.json > report.json
//
// The token comes from the environment, not argv, so it does not show in process listings.
// The plan (stdin) names what to do after the lists:
//   {"calls": [{"tool": "get_ticket", "arguments": {"ticket_id": 3}}],
//    "reads": ["ticket://3"], "prompts": [{"name": "triage_ticket", "arguments": {...}}]}
// The report (stdout) is one JSON document: the server's handshake, every list, and per call,
// read and prompt either the result or the error exactly as the SDK surfaced it. The SDK
// validates structured tool output against the tool's output schema (ajv, formats included)
// for tools it has listed, which is why the tools are listed first.

import { register } from 'node:module';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

// The SDK is installed outside the repository (make interop-tools). Bare specifiers that do not
// resolve from here are resolved from that installation instead.
const modules = process.env.NODE_CLIENT_DIR;
if (!modules) fail('NODE_CLIENT_DIR is not set (the folder whose node_modules holds the SDK)');
const hooks = `
let base;
export function initialize(data) { base = data.base; }
export async function resolve(specifier, context, next) {
  try {
    return await next(specifier, context);
  } catch (error) {
    if (error?.code !== 'ERR_MODULE_NOT_FOUND') throw error;
    return next(specifier, { ...context, parentURL: base });
  }
}`;
register(`data:text/javascript,${encodeURIComponent(hooks)}`, import.meta.url, {
  data: { base: pathToFileURL(join(modules, 'resolve-from-here.mjs')).href },
});

// MCP_TS_SDK picks the SDK line: "sdk" (@modelcontextprotocol/sdk 1.x, the default) or "client"
// (@modelcontextprotocol/client 2.x, what MCP Inspector 2.x runs).
const { Client, StreamableHTTPClientTransport } =
  (process.env.MCP_TS_SDK ?? 'sdk') === 'client'
    ? await import('@modelcontextprotocol/client')
    : {
        ...(await import('@modelcontextprotocol/sdk/client/index.js')),
        ...(await import('@modelcontextprotocol/sdk/client/streamableHttp.js')),
      };

function fail(message) {
  process.stderr.write(`${message}\n`);
  process.exit(2);
}

function surfaced(error) {
  // What the SDK raised: McpError carries the JSON-RPC code (and data); anything else is a
  // transport or client-side failure.
  return {
    error: {
      name: error?.name ?? typeof error,
      code: typeof error?.code === 'number' ? error.code : null,
      message: String(error?.message ?? error),
      ...(error?.data === undefined ? {} : { data: error.data }),
    },
  };
}

async function attempt(run) {
  try {
    return await run();
  } catch (error) {
    return surfaced(error);
  }
}

async function readStdin() {
  const chunks = [];
  for await (const chunk of process.stdin) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString('utf8').trim();
  return text ? JSON.parse(text) : {};
}

async function everyPage(list, key) {
  const items = [];
  let cursor;
  do {
    const page = await list(cursor === undefined ? undefined : { cursor });
    items.push(...page[key]);
    cursor = page.nextCursor;
  } while (cursor !== undefined);
  return items;
}

const url = process.argv[2];
const token = process.env.MCP_BEARER_TOKEN;
if (!url) fail('usage: node mcp_client.mjs <server url> < plan.json');
if (!token) fail('MCP_BEARER_TOKEN is not set');
const plan = await readStdin();

// MCP_TS_NEGOTIATION (2.x only): "auto" probes server/discover and speaks 2026-07-28 when offered;
// unset keeps the SDK default (the 2025-11-25 initialize handshake).
const negotiation = process.env.MCP_TS_NEGOTIATION;
const client = new Client(
  { name: 'interop-test', version: '1.0.0' },
  { capabilities: {}, ...(negotiation ? { versionNegotiation: { mode: negotiation } } : {}) },
);
const transport = new StreamableHTTPClientTransport(new URL(url), {
  requestInit: { headers: { Authorization: `Bearer ${token}` } },
});
const report = {};
try {
  await client.connect(transport);
} catch (error) {
  process.stdout.write(`${JSON.stringify({ connect: surfaced(error) })}\n`);
  process.exit(1);
}

const capabilities = client.getServerCapabilities() ?? {};
report.handshake = {
  protocolVersion: transport.protocolVersion ?? null,
  serverInfo: client.getServerVersion() ?? null,
  capabilities,
};
// What MCP Inspector does right after connecting to a server that advertises logging.
if (capabilities.logging) {
  report.setLoggingLevel = await attempt(async () => {
    await client.setLoggingLevel('info');
    return { ok: true };
  });
}

report.tools = await attempt(async () =>
  (await everyPage((p) => client.listTools(p), 'tools')).map((t) => t.name),
);
report.resourceTemplates = await attempt(async () =>
  (await everyPage((p) => client.listResourceTemplates(p), 'resourceTemplates')).map(
    (t) => t.uriTemplate,
  ),
);
report.resources = await attempt(async () =>
  (await everyPage((p) => client.listResources(p), 'resources')).map((r) => r.uri),
);
report.prompts = await attempt(async () =>
  (await everyPage((p) => client.listPrompts(p), 'prompts')).map((p) => p.name),
);

report.calls = [];
for (const { tool, arguments: args } of plan.calls ?? []) {
  const outcome = await attempt(async () => {
    const result = await client.callTool({ name: tool, arguments: args ?? {} });
    return {
      result: {
        isError: result.isError === true,
        content: result.content ?? [],
        ...(result.structuredContent === undefined
          ? {}
          : { structuredContent: result.structuredContent }),
      },
    };
  });
  report.calls.push({ tool, ...outcome });
}

report.reads = [];
for (const uri of plan.reads ?? []) {
  const outcome = await attempt(async () => ({ result: await client.readResource({ uri }) }));
  report.reads.push({ uri, ...outcome });
}

report.prompts_get = [];
for (const { name, arguments: args } of plan.prompts ?? []) {
  const outcome = await attempt(async () => ({
    result: await client.getPrompt({ name, arguments: args ?? {} }),
  }));
  report.prompts_get.push({ name, ...outcome });
}

await attempt(() => transport.terminateSession());
await attempt(() => client.close());
process.stdout.write(`${JSON.stringify(report)}\n`);
