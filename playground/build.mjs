// Builds the playground page into target/playground/: the bundled page and worker (esbuild),
// index.html and the stylesheet, and examples.json (examples.json's entries with the text of
// each scripts/NAME.rhai). playground.wasm, which tools/build-playground.sh puts there, is
// left alone.
import { build } from "esbuild";
import { copyFileSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, "..");
const out = join(root, "target", "playground");

/// The manifest's entries, each with its script's text and the title its first comment gives.
function examples() {
  const manifest = JSON.parse(readFileSync(join(here, "examples.json"), "utf8"));
  const scripts = readdirSync(join(root, "scripts"))
    .filter((f) => f.endsWith(".rhai") && !f.endsWith(".test.rhai"))
    .map((f) => f.slice(0, -".rhai".length))
    .sort();
  const listed = manifest.examples.map((e) => e.script);
  const missing = scripts.filter((s) => !listed.includes(s));
  const unknown = listed.filter((s) => !scripts.includes(s));
  if (missing.length || unknown.length) {
    throw new Error(
      `playground/examples.json must list every script of scripts/ once: ` +
        `missing ${JSON.stringify(missing)}, unknown ${JSON.stringify(unknown)}`,
    );
  }
  return manifest.examples.map((e) => {
    const script = readFileSync(join(root, "scripts", `${e.script}.rhai`), "utf8");
    const first = script.split("\n")[0].replace(/^\/\/\s*/, "").replace(/^scripts\/\S+:\s*/, "");
    return { name: e.script, title: first, ...e, script };
  });
}

rmSync(join(out, "assets"), { recursive: true, force: true });
mkdirSync(join(out, "assets"), { recursive: true });
await build({
  entryPoints: { main: join(here, "src", "main.js"), worker: join(here, "src", "worker.js") },
  bundle: true,
  minify: true,
  format: "iife",
  target: "chrome110",
  outdir: join(out, "assets"),
  logLevel: "warning",
});
copyFileSync(join(here, "src", "index.html"), join(out, "index.html"));
copyFileSync(join(here, "src", "style.css"), join(out, "assets", "style.css"));
writeFileSync(join(out, "examples.json"), JSON.stringify({ examples: examples() }));
console.log(`playground page built in ${out}`);
