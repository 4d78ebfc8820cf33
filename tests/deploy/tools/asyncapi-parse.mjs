// Parse an AsyncAPI document with @asyncapi/parser, as a producer's code generator would
// (the AsyncAPI Generator and Modelina both start from this parser and its ruleset).
// Usage: node asyncapi-parse.mjs NODE_MODULES_DIR DOCUMENT
// Prints one JSON object:
//   {"parser": version, "remoteRefs": [...],
//    "diagnostics": [{"severity": "error"|"warning"|"information"|"hint", "code", "message",
//                     "path"}],
//    "servers": {id: {"url", "variables": {name: default}}},
//    "channels": {id: {"address", "exchange", "queue", "operations": [id, ...]}},
//    "operations": {id: {"action", "channels": [id, ...], "messages": [id, ...],
//                        "tags": [name, ...], "reply": null | {"channel", "address"}}},
//    "messages": {id: {"correlationId": location | null, "headers": [name, ...]}}}
// "channels" and "operations" are read from the parsed model (empty when parsing failed),
// so they show what a generator sees, not what the JSON says. A $ref that is not local
// ("#/...") is reported and the document is not parsed: the parser would fetch it.
import { readFileSync } from "node:fs";
import { join, resolve } from "node:path";
import { createRequire } from "node:module";

const [nodeModules, documentPath] = process.argv.slice(2);
const require = createRequire(join(resolve(nodeModules), "noop.js"));
const { Parser } = require("@asyncapi/parser");
const parserVersion = require("@asyncapi/parser/package.json").version;
const SEVERITIES = ["error", "warning", "information", "hint"];

const text = readFileSync(documentPath, "utf8");

function remoteRefs(node, at, found) {
  if (Array.isArray(node)) {
    node.forEach((item, i) => remoteRefs(item, `${at}/${i}`, found));
  } else if (node !== null && typeof node === "object") {
    for (const [key, value] of Object.entries(node)) {
      if (key === "$ref" && typeof value === "string" && !value.startsWith("#")) {
        found.push({ path: at, ref: value });
      }
      remoteRefs(value, `${at}/${key}`, found);
    }
  }
  return found;
}

const out = { parser: parserVersion, remoteRefs: remoteRefs(JSON.parse(text), "", []),
              diagnostics: [], servers: {}, channels: {}, operations: {}, messages: {} };
if (out.remoteRefs.length === 0) {
  const { document, diagnostics } = await new Parser().parse(text, { source: documentPath });
  out.diagnostics = diagnostics.map((d) => ({
    severity: SEVERITIES[d.severity] ?? String(d.severity),
    code: String(d.code),
    message: d.message,
    path: d.path.join("/"),
  }));
  if (document !== undefined) {
    for (const server of document.servers().all()) {
      out.servers[server.id()] = {
        url: server.url(),
        variables: Object.fromEntries(
          server.variables().all().map((v) => [v.id(), v.defaultValue() ?? null])),
      };
    }
    for (const channel of document.channels().all()) {
      const amqp = channel.bindings().get("amqp")?.value() ?? {};
      out.channels[channel.id()] = {
        address: channel.address(),
        exchange: amqp.exchange?.name ?? null,
        queue: amqp.queue?.name ?? null,
        operations: channel.operations().all().map((o) => o.id()),
      };
    }
    for (const operation of document.operations().all()) {
      out.operations[operation.id()] = {
        action: operation.action(),
        channels: operation.channels().all().map((c) => c.id()),
        messages: operation.messages().all().map((m) => m.id()),
        tags: operation.tags().all().map((t) => t.name()),
        reply: operation.reply() === undefined ? null : {
          channel: operation.reply().channel()?.id() ?? null,
          address: operation.reply().address()?.location() ?? null,
        },
      };
    }
    for (const message of document.messages().all()) {
      out.messages[message.id()] = {
        correlationId: message.correlationId()?.location() ?? null,
        headers: Object.keys(message.headers()?.properties() ?? {}),
      };
    }
  }
}
console.log(JSON.stringify(out));
