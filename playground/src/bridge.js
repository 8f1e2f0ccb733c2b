// The page's side of the worker: calls of the playground module as promises, each with a
// wall-clock backstop. The module is compiled once, here, and handed to each worker, so a
// fresh worker is ready at once. A call that takes longer than the backstop (the module's own
// limits should stop a script long before) terminates the worker, rejects every pending call
// with a BackstopError, and starts a fresh worker.

export class BackstopError extends Error {}

async function compile(url) {
  const response = await fetch(url);
  if (!response.ok) {
    throw new Error(`${url} is missing (HTTP ${response.status}): build the page with tools/build-playground.sh`);
  }
  return WebAssembly.compileStreaming(response);
}

export class Bridge {
  constructor(workerUrl, wasmUrl, { timeoutMs = 5000, onRestart = () => {} } = {}) {
    this.workerUrl = workerUrl;
    this.module = compile(wasmUrl);
    this.timeoutMs = timeoutMs;
    this.onRestart = onRestart;
    this.nextId = 1;
    this.pending = new Map();
    this.start();
  }

  start() {
    const worker = new Worker(this.workerUrl);
    this.worker = worker;
    let loaded;
    this.ready = new Promise((resolve, reject) => (loaded = { resolve, reject }));
    this.ready.catch(() => {});
    this.module.then((module) => worker.postMessage({ module }), loaded.reject);
    worker.onmessage = ({ data }) => {
      if ("ready" in data) {
        if (data.ready) loaded.resolve();
        else loaded.reject(new Error(data.error));
        return;
      }
      const call = this.pending.get(data.id);
      if (!call) return;
      this.pending.delete(data.id);
      clearTimeout(call.timer);
      if ("answer" in data) call.resolve(data.answer);
      else {
        call.reject(new Error(data.error));
        if (data.fatal) this.restart(`the module failed (${data.error}); a fresh one was started`);
      }
    };
  }

  restart(why) {
    this.worker.terminate();
    for (const call of this.pending.values()) {
      clearTimeout(call.timer);
      call.reject(new BackstopError(why));
    }
    this.pending.clear();
    this.start();
    this.onRestart(why);
  }

  async call(request) {
    await this.ready;
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      const seconds = this.timeoutMs / 1000;
      const timer = setTimeout(
        () => this.restart(`stopped after ${seconds} s: the page's backstop ended the worker and started a fresh one`),
        this.timeoutMs,
      );
      this.pending.set(id, { resolve, reject, timer });
      this.worker.postMessage({ id, request });
    });
  }
}
