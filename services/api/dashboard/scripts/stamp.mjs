// Records in dist/ a hash of everything the build reads, so a test can tell
// when the committed build is older than its sources (tests/unit/test_dashboard_build.py).
import { createHash } from "node:crypto";
import { readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";

const root = new URL("..", import.meta.url).pathname;
const inputs = ["index.html", "package.json", "package-lock.json", "vite.config.js", "public", "src"];

function files(path) {
  return statSync(path).isDirectory() ? readdirSync(path).flatMap((name) => files(join(path, name))) : [path];
}

const hash = createHash("sha256");
for (const file of inputs.flatMap((p) => files(join(root, p))).map((f) => relative(root, f)).sort()) {
  hash.update(file + "\0");
  hash.update(readFileSync(join(root, file)));
  hash.update("\0");
}
writeFileSync(join(root, "dist", "SOURCE_HASH"), hash.digest("hex") + "\n");
