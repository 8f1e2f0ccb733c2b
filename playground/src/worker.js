// The Web Worker that runs the playground module, so a long run never freezes the page. The
// page sends the compiled module first ({module}: answered {ready}), then calls ({id, request}:
// answered {id, answer}, or {id, error} when the call itself failed). The page terminates the
// worker when a call takes too long.
import { ProcExit, wasiImports } from "./wasi.js";

let instance = null;
const encoder = new TextEncoder();
const decoder = new TextDecoder();

/// One call of the module: the request as JSON in, the answer as JSON out (both freed here).
function call(request) {
  const { memory, playground_alloc, playground_free, playground_call } = instance.exports;
  const input = encoder.encode(JSON.stringify(request));
  const ptr = playground_alloc(input.length);
  new Uint8Array(memory.buffer, ptr, input.length).set(input);
  const packed = BigInt.asUintN(64, playground_call(ptr, input.length));
  const outPtr = Number(packed >> 32n);
  const outLen = Number(packed & 0xffffffffn);
  const text = decoder.decode(new Uint8Array(memory.buffer, outPtr, outLen));
  playground_free(outPtr, outLen);
  return JSON.parse(text);
}

self.onmessage = async ({ data }) => {
  if (data.module) {
    try {
      const imports = { wasi_snapshot_preview1: wasiImports(() => instance.exports.memory) };
      instance = await WebAssembly.instantiate(data.module, imports);
      instance.exports._initialize?.();
      self.postMessage({ ready: true });
    } catch (e) {
      self.postMessage({ ready: false, error: `the module did not start: ${e.message ?? e}` });
    }
    return;
  }
  const { id, request } = data;
  try {
    self.postMessage({ id, answer: call(request) });
  } catch (e) {
    // A trap leaves the instance in an unknown state: the page starts a fresh worker.
    const fatal = e instanceof WebAssembly.RuntimeError || e instanceof ProcExit;
    self.postMessage({ id, error: String(e.message ?? e), fatal });
  }
};
