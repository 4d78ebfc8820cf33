// Compile every schemas/*.schema.json with ajv 8 (draft 2020-12 build, default strict
// options), then validate the given documents, as a Node producer would before publishing.
// Usage: node ajv-validate.mjs NODE_MODULES_DIR SCHEMAS_DIR < cases.json
//   cases.json: a JSON array of {"schema": "command.schema.json", "data": ...}
// Prints one JSON object: {"compiled": {file: null | "error"}, "warnings": [...],
// "results": [{"valid": bool, "errors": [...ajv errors]}]}. A strict-mode warning
// (ajv logs some rather than throwing) is reported, never ignored.
import { readFileSync, readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { createRequire } from "node:module";

const [nodeModules, schemasDir] = process.argv.slice(2);
const require = createRequire(join(resolve(nodeModules), "noop.js"));
const Ajv2020 = require("ajv/dist/2020").default;

const warnings = [];
const logger = {
  log: () => {},
  warn: (...args) => warnings.push(args.join(" ")),
  error: (...args) => warnings.push(args.join(" ")),
};
const ajv = new Ajv2020({ logger });
const compiled = {};
const validators = {};
for (const file of readdirSync(schemasDir).filter((f) => f.endsWith(".schema.json")).sort()) {
  try {
    validators[file] = ajv.compile(JSON.parse(readFileSync(join(schemasDir, file), "utf8")));
    compiled[file] = null;
  } catch (error) {
    compiled[file] = String(error.message);
  }
}
const results = JSON.parse(readFileSync(0, "utf8")).map(({ schema, data }) => {
  const validate = validators[schema];
  if (!validate) return { valid: false, errors: [{ message: `${schema} did not compile` }] };
  const valid = validate(data);
  return { valid, errors: validate.errors ?? [] };
});
console.log(JSON.stringify({ compiled, warnings, results }));
