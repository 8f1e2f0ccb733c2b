// The little of WASI (preview 1) the playground module uses: standard output and error go to
// the console, clocks, random bytes, empty arguments and environment. Any other call answers
// ENOSYS, so a module that wants a file or a socket fails cleanly instead of trapping on a
// missing import.

const ESUCCESS = 0;
const EBADF = 8;
const ENOSYS = 52;

export class ProcExit extends Error {
  constructor(code) {
    super(`the module exited with status ${code}`);
    this.code = code;
  }
}

/// The imports object for `wasi_snapshot_preview1`; `memory()` gives the instance's memory,
/// known only once it is instantiated.
export function wasiImports(memory) {
  const view = () => new DataView(memory().buffer);
  const bytes = () => new Uint8Array(memory().buffer);
  const decoder = new TextDecoder();
  const pending = { 1: "", 2: "" };

  function flush(fd, text) {
    pending[fd] += text;
    const lines = pending[fd].split("\n");
    pending[fd] = lines.pop();
    for (const line of lines) (fd === 2 ? console.warn : console.log)(line);
  }

  const calls = {
    fd_write(fd, iovs, iovsLen, written) {
      if (fd !== 1 && fd !== 2) return EBADF;
      const v = view();
      let total = 0;
      let text = "";
      for (let i = 0; i < iovsLen; i++) {
        const ptr = v.getUint32(iovs + i * 8, true);
        const len = v.getUint32(iovs + i * 8 + 4, true);
        text += decoder.decode(bytes().subarray(ptr, ptr + len), { stream: true });
        total += len;
      }
      flush(fd, text);
      v.setUint32(written, total, true);
      return ESUCCESS;
    },
    clock_time_get(_id, _precision, out) {
      const nanos = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
      view().setBigUint64(out, nanos, true);
      return ESUCCESS;
    },
    clock_res_get(_id, out) {
      view().setBigUint64(out, 1000n, true);
      return ESUCCESS;
    },
    random_get(ptr, len) {
      // getRandomValues fills at most 65,536 bytes per call.
      for (let at = 0; at < len; at += 65536) {
        crypto.getRandomValues(bytes().subarray(ptr + at, ptr + Math.min(len, at + 65536)));
      }
      return ESUCCESS;
    },
    environ_sizes_get(count, size) {
      view().setUint32(count, 0, true);
      view().setUint32(size, 0, true);
      return ESUCCESS;
    },
    environ_get: () => ESUCCESS,
    args_sizes_get(count, size) {
      view().setUint32(count, 0, true);
      view().setUint32(size, 0, true);
      return ESUCCESS;
    },
    args_get: () => ESUCCESS,
    sched_yield: () => ESUCCESS,
    // No preopened directories: the C library stops looking at the first EBADF.
    fd_prestat_get: () => EBADF,
    proc_exit(code) {
      throw new ProcExit(code);
    },
  };
  // Whatever else the module imports from WASI answers ENOSYS.
  return new Proxy(calls, {
    get: (target, name) => (name in target ? target[name] : () => ENOSYS),
  });
}
