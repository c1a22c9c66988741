// How Node's `cookie` package reads a request's Cookie fields, for
// tests/cookie_parsers.rs: through cookie-parser (Express's middleware,
// on the `cookie` it pins), and the newest `cookie` of each major version.
//
//     node node_cookies.mjs <dir>    (the packages in <dir>/node_modules)
//
// Reads one request per line on stdin: its Cookie fields, each written as
// `x` and its bytes in hex, separated by spaces. Answers each line with one
// JSON line, {"readings": [{"how": ..., "cookies": [[name, value], ...]}]}
// (or a reading's "error"). Node's HTTP server decodes field values as
// latin-1 and joins repeated Cookie fields with "; ", as done here.

import { createRequire } from "node:module";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import path from "node:path";
import { pathToFileURL } from "node:url";

const dir = path.resolve(process.argv[2]);
const require = createRequire(path.join(dir, "package.json"));
const version = (name) =>
  JSON.parse(readFileSync(path.join(dir, "node_modules", name, "package.json"))).version;

const cookieParser = require("cookie-parser");
const cookie1 = require("cookie-1");
const cookie2 = await import(pathToFileURL(require.resolve("cookie-2")));

const parsers = [
  [
    `cookie-parser ${version("cookie-parser")} (cookie ${version("cookie")})`,
    (raw) => {
      const req = { headers: { cookie: raw } };
      cookieParser()(req, {}, () => {});
      return req.cookies;
    },
  ],
  [`cookie ${version("cookie-1")}`, (raw) => cookie1.parse(raw)],
  [`cookie ${version("cookie-2")}`, (raw) => cookie2.parseCookie(raw)],
];

const lines = createInterface({ input: process.stdin, terminal: false });
for await (const line of lines) {
  const fields = line
    .split(" ")
    .filter((t) => t.length > 0)
    .map((t) => Buffer.from(t.slice(1), "hex").toString("latin1"));
  const raw = fields.join("; ");
  const readings = parsers.map(([how, parse]) => {
    try {
      const cookies = parse(raw);
      return { how, cookies: Object.keys(cookies).map((k) => [k, String(cookies[k])]) };
    } catch (e) {
      return { how, error: String(e) };
    }
  });
  process.stdout.write(JSON.stringify({ readings }) + "\n");
}
