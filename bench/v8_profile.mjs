// Where V8's time goes in a plugin, per request: runs a proxy-wasm .wasm in Node's V8 (the
// engine Envoy embeds) with a minimal host, times requests and, with --cpu-prof, writes a
// profile whose wasm frames carry the functions' names.
//
//   node bench/v8_profile.mjs WASM CONFIGURATION [--requests N] [--response-body FILE]
//        [--chunk-size N]
//   node --cpu-prof --cpu-prof-dir=DIR bench/v8_profile.mjs ...   then
//   node bench/v8_profile.mjs --top DIR/FILE.cpuprofile
//
// wasmtime's fuel (bench/wasm_profile.py --fuel) counts instructions exactly, but not what each
// costs in V8 (a byte copy counts per byte; tight loops run several instructions a cycle).
// This is the check of a fuel result against the JIT Envoy runs. The host answers what a
// request needs (header maps, buffers, the configuration, time, logs); every other import
// answers NotFound. Requests: a GET with a few headers, a 200 response with the body file
// (default: 3 bytes), given in pieces of --chunk-size bytes (each call's buffer is the piece,
// the plugin pausing is not modelled: use it for scripts that let chunks through).
import { readFileSync } from "node:fs";
import { WASI } from "node:wasi";

const args = process.argv.slice(2);
const option = (name, fallback) => {
  const at = args.indexOf(name);
  if (at < 0) return fallback;
  const [, value] = args.splice(at, 2);
  return value;
};

if (args[0] === "--top") {
  const profile = JSON.parse(readFileSync(args[1], "utf8"));
  const self = new Map();
  const byId = new Map(profile.nodes.map((n) => [n.id, n]));
  const counts = new Map();
  for (const id of profile.samples) counts.set(id, (counts.get(id) || 0) + 1);
  let total = 0;
  for (const [id, count] of counts) {
    const name = byId.get(id).callFrame.functionName || "(anonymous)";
    self.set(name, (self.get(name) || 0) + count);
    total += count;
  }
  const rows = [...self].sort((a, b) => b[1] - a[1]).slice(0, Number(args[2] || 25));
  for (const [name, count] of rows) {
    console.log(`${((100 * count) / total).toFixed(1).padStart(5)} %  ${name.slice(0, 150)}`);
  }
  process.exit(0);
}

const requests = Number(option("--requests", "200"));
const bodyFile = option("--response-body", null);
const chunkSize = Number(option("--chunk-size", "0"));
const [wasmFile, configuration] = args;
const body = bodyFile ? readFileSync(bodyFile) : Buffer.from("ok\n");

const OK = 0, NOT_FOUND = 1;
const ROOT = 1;
const buffers = new Map(); // buffer type -> Buffer
const maps = new Map(); // map type -> [[name, value]] (Buffers)
let memory, exports;
const view = () => new DataView(memory.buffer);
const bytes = (ptr, size) => Buffer.from(memory.buffer, ptr, size);
const give = (data, retPtr, retSize) => {
  const ptr = exports.proxy_on_memory_allocate(Math.max(data.length, 1));
  bytes(ptr, data.length).set(data);
  view().setUint32(retPtr, ptr, true);
  view().setUint32(retSize, data.length, true);
  return OK;
};
const serialize = (pairs) => {
  const parts = [Buffer.alloc(4 + 8 * pairs.length)];
  parts[0].writeUInt32LE(pairs.length, 0);
  pairs.forEach(([k, v], i) => {
    parts[0].writeUInt32LE(k.length, 4 + 8 * i);
    parts[0].writeUInt32LE(v.length, 8 + 8 * i);
  });
  for (const [k, v] of pairs) parts.push(k, Buffer.from([0]), v, Buffer.from([0]));
  return Buffer.concat(parts);
};
const deserialize = (data) => {
  const n = data.readUInt32LE(0);
  let at = 4 + 8 * n;
  const pairs = [];
  for (let i = 0; i < n; i++) {
    const ks = data.readUInt32LE(4 + 8 * i), vs = data.readUInt32LE(8 + 8 * i);
    pairs.push([Buffer.from(data.subarray(at, at + ks)), Buffer.from(data.subarray(at + ks + 1, at + ks + 1 + vs))]);
    at += ks + vs + 2;
  }
  return pairs;
};
const key = (ptr, size) => Buffer.from(bytes(ptr, size).toString("latin1").toLowerCase(), "latin1");
const host = {
  proxy_log: () => OK,
  proxy_get_buffer_bytes(type, start, length, retPtr, retSize) {
    const buffer = buffers.get(type);
    if (!buffer) return NOT_FOUND;
    return give(buffer.subarray(start, length < 0 ? undefined : start + length), retPtr, retSize);
  },
  proxy_set_buffer_bytes(type, start, length, ptr, size) {
    const old = buffers.get(type) || Buffer.alloc(0);
    const data = Buffer.from(bytes(ptr, size));
    buffers.set(type, start === 0 && length === 0 ? Buffer.concat([data, old])
      : start >= old.length ? Buffer.concat([old, data]) : data);
    return OK;
  },
  proxy_get_header_map_pairs: (type, retPtr, retSize) => give(serialize(maps.get(type) || []), retPtr, retSize),
  proxy_set_header_map_pairs(type, ptr, size) {
    maps.set(type, deserialize(Buffer.from(bytes(ptr, size))));
    return OK;
  },
  proxy_get_header_map_value(type, kp, ks, retPtr, retSize) {
    const name = key(kp, ks);
    const pair = (maps.get(type) || []).find(([k]) => k.equals(name));
    return pair ? give(pair[1], retPtr, retSize) : NOT_FOUND;
  },
  proxy_add_header_map_value(type, kp, ks, vp, vs) {
    maps.get(type)?.push([key(kp, ks), Buffer.from(bytes(vp, vs))]);
    return OK;
  },
  proxy_replace_header_map_value(type, kp, ks, vp, vs) {
    const name = key(kp, ks);
    const kept = (maps.get(type) || []).filter(([k]) => !k.equals(name));
    maps.set(type, [...kept, [name, Buffer.from(bytes(vp, vs))]]);
    return OK;
  },
  proxy_remove_header_map_value(type, kp, ks) {
    const name = key(kp, ks);
    maps.set(type, (maps.get(type) || []).filter(([k]) => !k.equals(name)));
    return OK;
  },
  proxy_get_current_time_nanoseconds(retPtr) {
    view().setBigUint64(retPtr, process.hrtime.bigint(), true);
    return OK;
  },
  proxy_set_effective_context: () => OK,
  proxy_continue_stream: () => OK,
  proxy_done: () => OK,
};

const module = new WebAssembly.Module(readFileSync(wasmFile));
const wasi = new WASI({ version: "preview1" });
const imports = { env: {} };
for (const imp of WebAssembly.Module.imports(module)) {
  if (imp.kind !== "function") continue;
  if (imp.module === "env") imports.env[imp.name] = host[imp.name] || (() => NOT_FOUND);
}
Object.assign(imports, wasi.getImportObject());
const instance = new WebAssembly.Instance(module, imports);
exports = instance.exports;
memory = exports.memory;
wasi.initialize(instance);

buffers.set(7, Buffer.from(configuration));
exports.proxy_on_context_create(ROOT, 0);
exports.proxy_on_vm_start(ROOT, 0);
if (exports.proxy_on_configure(ROOT, buffers.get(7).length) !== 1) {
  console.error("the plugin refused its configuration");
  process.exit(1);
}

const requestHeaders = [[":method", "GET"], [":path", "/"], [":authority", "bench"], [":scheme", "http"],
  ["user-agent", "v8_profile"], ["accept", "*/*"]].map(([k, v]) => [Buffer.from(k), Buffer.from(v)]);
let context = ROOT + 1;
function exchange() {
  const id = context++;
  maps.set(0, requestHeaders.slice());
  exports.proxy_on_context_create(id, ROOT);
  exports.proxy_on_request_headers(id, requestHeaders.length, 1);
  maps.set(2, [[Buffer.from(":status"), Buffer.from("200")], [Buffer.from("content-length"), Buffer.from(String(body.length))]]);
  exports.proxy_on_response_headers(id, 2, 0);
  const step = chunkSize || body.length;
  for (let at = 0; at < body.length; at += step) {
    const piece = body.subarray(at, at + step);
    buffers.set(1, piece);
    exports.proxy_on_response_body(id, piece.length, at + step >= body.length ? 1 : 0);
  }
  exports.proxy_on_log(id);
  exports.proxy_on_done(id);
  exports.proxy_on_delete(id);
}

for (let i = 0; i < Math.min(requests, 200); i++) exchange();
const start = process.hrtime.bigint();
for (let i = 0; i < requests; i++) exchange();
const micros = Number(process.hrtime.bigint() - start) / 1000 / requests;
console.log(`${wasmFile}: ${micros.toFixed(2)} µs per request in V8 (${requests} requests after a warm-up)`);
