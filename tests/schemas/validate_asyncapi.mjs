// Validates an AsyncAPI document with the official parser; prints diagnostics as JSON lines.
// Usage: node validate_asyncapi.mjs <node_modules dir> <asyncapi.yaml>
import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import path from "node:path";

const [modulesDir, documentPath] = process.argv.slice(2);
const require = createRequire(path.join(modulesDir, "noop.js"));
const { Parser } = require("@asyncapi/parser");
const parser = new Parser();
const { document, diagnostics } = await parser.parse(readFileSync(documentPath, "utf8"));
for (const d of diagnostics) {
  console.log(JSON.stringify({ severity: d.severity, code: d.code, message: d.message, path: d.path }));
}
// Severity 0 is an error in the parser's diagnostics (spectral convention).
const errors = diagnostics.filter((d) => d.severity === 0);
process.exit(document && errors.length === 0 ? 0 : 1);
