"""A proxy-wasm host on wasmtime, in Python: loads a plugin .wasm and takes HTTP requests
through it in Envoy's order.

`bench/wasm_profile.py` counts the plugin's instructions with it; `tests/higress/acceptance.py`
runs the Higress build on it, with Higress's Redis functions answered by a real redis-server.

    host = Host("proxy_rhai.wasm", redis={"outbound|6379||redis.dns": ("127.0.0.1", 6379)})
    host.start(json.dumps({"script": ...}).encode())           # False: configuration refused
    answer = host.exchange([(":method", "GET"), (":path", "/"), ...],
                           upstream=lambda headers, body: ([(":status", "200")], b"ok"))

What it does, as Envoy does (and `src/emulator/` models it):
- the root context is 1, streams 2, 3, …; a local response ends the stream (no response phase),
  one sent after the response headers resets it; a paused phase waits for the callouts and
  Redis replies in flight and goes on when the plugin resumes it; the request headers are
  there during the request headers phase, the response headers during the response headers
  phase;
- an HTTP callout is answered by `http_call_answer(call)` (headers, body) after the call into
  the plugin that made it returns, on the root context's id;
- Redis, as Higress's Envoy implements it (sources cited at `RedisCluster`).

Headers and bodies given to it may be str or bytes; what it returns is bytes.
"""
import collections
import errno
import os
import selectors
import socket
import struct
import sys
import time
import urllib.parse

# Statuses (proxy-wasm `WasmResult`).
OK, NOT_FOUND, BAD_ARGUMENT, INTERNAL_FAILURE = 0, 1, 2, 10
# Header maps.
REQUEST_HEADERS, RESPONSE_HEADERS, CALLOUT_HEADERS = 0, 2, 6
# Buffers; 9 is Higress's (`WasmBufferType::RedisCallResponse`).
REQUEST_BODY, RESPONSE_BODY, CALLOUT_BODY, PLUGIN_CONFIGURATION, REDIS_RESPONSE = 0, 1, 4, 7, 9
# `proxy_continue_stream`'s stream types.
REQUEST, RESPONSE = 0, 1
# `RedisStatus` (higress-group/proxy-wasm-cpp-sdk proxy_wasm_enums.h): the only two.
REDIS_OK, REDIS_NETWORK_ERROR = 0, 1
ROOT_CONTEXT = 1


def serialize(pairs):
    out = struct.pack("<I", len(pairs))
    for k, v in pairs:
        out += struct.pack("<II", len(k), len(v))
    for k, v in pairs:
        out += k + b"\0" + v + b"\0"
    return out


def deserialize(data):
    (n,) = struct.unpack_from("<I", data, 0)
    sizes = [struct.unpack_from("<II", data, 4 + 8 * i) for i in range(n)]
    at, pairs = 4 + 8 * n, []
    for ks, vs in sizes:
        pairs.append((data[at:at + ks], data[at + ks + 1:at + ks + 1 + vs]))
        at += ks + vs + 2
    return pairs


def as_bytes(value):
    return value if isinstance(value, bytes) else str(value).encode()


def encode(pairs):
    return [(as_bytes(k), as_bytes(v)) for k, v in pairs]


def header(pairs, name):
    """The first value of `name` in `pairs` (bytes pairs), or None."""
    name = as_bytes(name)
    return next((v for k, v in pairs if k == name), None)


class Answer:
    """What the client got: `status`, `headers` and `body` (bytes), whether the plugin
    answered it (`local`), whether the stream was reset after its headers (`reset`), or left
    paused with nothing to resume it (`stalled`), and what went upstream (`upstream`: request
    headers and body, None when the plugin answered)."""

    def __init__(self):
        self.status, self.headers, self.body = 0, [], b""
        self.local = self.reset = self.stalled = False
        self.upstream = None

    def header(self, name):
        value = header(self.headers, name)
        return None if value is None else value.decode()

    def __repr__(self):
        flags = [f for f in ("local", "reset", "stalled") if getattr(self, f)]
        return f"<Answer {self.status} {self.headers} {self.body!r} {' '.join(flags)}>"


class Stream:
    """The stream being run: its maps, local response and resumes."""

    def __init__(self, context_id):
        self.id = context_id
        self.maps = {}
        self.local = None
        self.resumed = {REQUEST: False, RESPONSE: False}


_compiled = {}


def compiled(wasm, fuel=False, profiler=None):
    """The engine and compiled module for `wasm` (a path, or WebAssembly text), compiled once
    per process: hosts of the same module share them."""
    import wasmtime

    key = (wasm, fuel, profiler)
    if key not in _compiled:
        config = wasmtime.Config()
        if fuel:
            config.consume_fuel = True
        if profiler:
            config.profiler = profiler
        engine = wasmtime.Engine(config)
        module = (wasmtime.Module(engine, wasm) if wasm.lstrip().startswith("(module")
                  else wasmtime.Module.from_file(engine, wasm))
        _compiled[key] = engine, module
    return _compiled[key]


class Host:
    """One plugin VM (one worker's, in Envoy) with its root context.

    `redis` maps cluster names to (host, port) (None: a cluster without endpoints);
    `http_call_answer(token)` answers HTTP callouts with (headers, body). `fuel` counts wasm instructions (`store.get_fuel()`), `profiler` is wasmtime's
    ("perfmap"), `extra_imports(host)` gives handlers for imports of other modules by
    (module, name); `echo_level`: plugin logs at that level and above go to stderr too
    (they are all kept in `logs`); `clock()`: the time the plugin reads, in nanoseconds since
    the epoch (Redis timeouts run on the real clock whatever it says)."""

    def __init__(self, wasm, *, redis=None, http_call_answer=None, fuel=False, profiler=None,
                 extra_imports=None, echo_level=3, connect_timeout_ms=5000, clock=time.time_ns):
        import wasmtime

        self.engine, self.module = compiled(wasm, fuel, profiler)
        self.store = wasmtime.Store(self.engine)
        if fuel:
            self.store.set_fuel(2**62)
        self.store.set_wasi(wasmtime.WasiConfig())
        self.http_call_answer = http_call_answer
        self.echo_level = echo_level
        self.clock = clock
        self.logs = []
        self.buffers = {}
        self.stream = None
        self.root = Stream(ROOT_CONTEXT)
        self.effective = ROOT_CONTEXT
        self.next_context = ROOT_CONTEXT + 1
        # Envoy's callout ids (cpp-host wasm.h): one counter per type, +4 each, the type in
        # the low two bits; HTTP calls are type 0, Redis calls type 3 (7, 11, …).
        self.next_http_call = 0
        self.next_redis_call = 3
        self.http_calls = []  # tokens not answered yet
        self.callout = {}  # the answer of the callout being delivered
        self.tick_ms = 0
        self.redis = RedisClient(self, redis or {}, connect_timeout_ms)
        linker = wasmtime.Linker(self.engine)
        linker.define_wasi()
        extra = extra_imports(self) if extra_imports else {}
        handlers = self.handlers()
        for imp in self.module.imports:
            if (imp.module, imp.name) in extra:
                linker.define(self.store, imp.module, imp.name,
                              wasmtime.Func(self.store, imp.type, extra[(imp.module, imp.name)]))
            if imp.module != "env":
                continue
            results = len(imp.type.results)
            handler = handlers.get(imp.name, lambda *a, r=results: NOT_FOUND if r else None)
            linker.define(self.store, "env", imp.name, wasmtime.Func(self.store, imp.type, handler))
        self.instance = linker.instantiate(self.store, self.module)
        self.exports = self.instance.exports(self.store)
        self.memory = self.exports["memory"]

    def imports(self, module="env"):
        return sorted(i.name for i in self.module.imports if i.module == module)

    # Calls into the plugin.

    def call(self, name, *args, context=None):
        """Calls the plugin's export `name`; the effective context is `context` (else the
        first argument, the context id of every proxy_on_* call) until the plugin changes it."""
        self.effective = context if context is not None else (args[0] if args else ROOT_CONTEXT)
        return self.exports[name](self.store, *args)

    def start(self, configuration):
        """Creates the root context and configures it; False when the plugin refuses."""
        self.buffers[PLUGIN_CONFIGURATION] = as_bytes(configuration)
        self.exports["_initialize"](self.store)
        self.call("proxy_on_context_create", ROOT_CONTEXT, 0)
        self.call("proxy_on_vm_start", ROOT_CONTEXT, 0)
        return self.call("proxy_on_configure", ROOT_CONTEXT, len(self.buffers[PLUGIN_CONFIGURATION])) == 1

    def exchange(self, request_headers, request_body=b"", upstream=None, chunk_size=0):
        """Takes one request through the plugin and returns the `Answer`. `upstream(headers,
        body)` answers what the plugin let through with (headers, body); with `chunk_size` the
        response body reaches the plugin in pieces of that many bytes."""
        stream = self.stream = Stream(self.next_context)
        self.next_context += 1
        ctx, answer = stream.id, Answer()
        request_headers, request_body = encode(request_headers), as_bytes(request_body)
        stream.maps[REQUEST_HEADERS] = request_headers
        self.call("proxy_on_context_create", ctx, ROOT_CONTEXT)
        action = self.call("proxy_on_request_headers", ctx, len(request_headers), int(not request_body))
        flow = self.settle(action, REQUEST)
        forwarded = stream.maps.pop(REQUEST_HEADERS, [])
        if flow == "proceed" and request_body:
            self.buffers[REQUEST_BODY] = request_body
            action = self.call("proxy_on_request_body", ctx, len(request_body), 1)
            flow = self.settle(action, REQUEST)
        if flow == "proceed":
            answer.upstream = (forwarded, self.buffers.pop(REQUEST_BODY, b""))
            headers, body = upstream(*answer.upstream) if upstream else ([(":status", "200")], b"")
            headers, body = encode(headers), as_bytes(body)
            stream.maps[RESPONSE_HEADERS] = headers
            action = self.call("proxy_on_response_headers", ctx, len(headers), int(not body))
            flow = self.settle(action, RESPONSE)
            sent = stream.maps.pop(RESPONSE_HEADERS, [])
            if flow == "proceed":
                answer.headers = sent
                if body:
                    flow = self.response_body(body, chunk_size, answer)
        if flow == "local":
            status, headers, body = stream.local
            if answer.headers:
                answer.reset = True  # the headers are gone: Envoy can only reset the stream
            else:
                answer.headers, answer.body, answer.local = [(b":status", b"%d" % status)] + headers, body, True
        answer.stalled = flow == "stalled"
        status = header(answer.headers, ":status")
        answer.status = int(status) if status else 0
        # Replies the stream went on without: Envoy delivers them whenever they come.
        while self.http_calls or self.redis.in_flight():
            self.wait()
        self.call("proxy_on_log", ctx)
        self.call("proxy_on_done", ctx)
        self.call("proxy_on_delete", ctx)
        self.stream = None
        return answer

    def response_body(self, body, chunk_size, answer):
        step = chunk_size or max(len(body), 1)
        held = b""
        for at in range(0, max(len(body), 1), step):
            # The proxy's buffer: what the plugin held (a call that returned Pause) and the piece.
            piece = self.buffers[RESPONSE_BODY] = held + body[at:at + step]
            last = at + step >= len(body)
            paused = self.call("proxy_on_response_body", self.stream.id, len(piece), int(last))
            if self.stream.local:
                return "local"
            held = self.buffers[RESPONSE_BODY] if paused else b""
            if not paused:
                answer.body += self.buffers[RESPONSE_BODY]
            elif last:
                flow = self.settle(paused, RESPONSE)
                if flow == "proceed":
                    answer.body += self.buffers[RESPONSE_BODY]
                return flow
        return "proceed"

    def settle(self, action, side):
        """After a phase returned `action`: "local" (the plugin answered), "proceed" (it
        continued or resumed) or "stalled" (paused, and nothing in flight will resume it);
        answers callouts and Redis calls while the stream waits for them."""
        while True:
            if self.stream.local:
                return "local"
            if action == 0 or self.stream.resumed[side]:
                self.stream.resumed[side] = False
                return "proceed"
            if not (self.http_calls or self.redis.in_flight()):
                return "stalled"
            self.wait()

    def wait(self):
        """Delivers the next event: an HTTP callout's answer, else Redis's next replies or
        failures (waiting for them)."""
        if self.http_calls:
            token = self.http_calls.pop(0)
            headers, body = self.http_call_answer(token)
            self.callout[CALLOUT_HEADERS] = encode(headers)
            self.buffers[CALLOUT_BODY] = as_bytes(body)
            self.call("proxy_on_http_call_response", ROOT_CONTEXT, token, len(headers),
                      len(self.buffers[CALLOUT_BODY]), 0)
            del self.buffers[CALLOUT_BODY], self.callout[CALLOUT_HEADERS]
            return
        self.redis.poll()

    def tick(self):
        """The root context's timer fires (a test says when: no clock runs it); False when the
        plugin set none."""
        if not self.tick_ms:
            return False
        self.call("proxy_on_tick", ROOT_CONTEXT)
        return True

    def stream_or_root(self):
        """The stream the effective context is, or an empty stand-in for the root context
        (whose maps hold only a callout's answer)."""
        if self.stream and self.effective == self.stream.id:
            return self.stream
        return self.root

    # The imports.

    def read(self, ptr, size):
        return bytes(self.memory.read(self.store, ptr, ptr + size))

    def write_u32(self, value, ptr):
        self.memory.write(self.store, struct.pack("<I", value), ptr)

    def give(self, data, ret_ptr, ret_size):
        ptr = self.exports["proxy_on_memory_allocate"](self.store, max(len(data), 1))
        self.memory.write(self.store, data, ptr)
        self.write_u32(ptr, ret_ptr)
        self.write_u32(len(data), ret_size)

    def handlers(self):
        return {name[len("import_"):]: getattr(self, name) for name in dir(self) if name.startswith("import_")}

    def import_proxy_log(self, level, ptr, size):
        message = self.read(ptr, size).decode(errors="replace")
        self.logs.append((level, message))
        if self.echo_level is not None and level >= self.echo_level:
            print("plugin log:", message, file=sys.stderr)
        return OK

    def maps(self, map_type):
        """The maps `map_type` is in: a callout's answer is the root context's (Envoy keeps it
        there, readable from any context), the others the effective stream's."""
        return self.callout if map_type == CALLOUT_HEADERS else self.stream_or_root().maps

    def key(self, ptr, size):
        """A header name as Envoy takes it: lowercased (`Http::LowerCaseString`)."""
        return self.read(ptr, size).lower()

    def import_proxy_get_header_map_value(self, map_type, kp, ks, ret_ptr, ret_size):
        value = header(self.maps(map_type).get(map_type, []), self.key(kp, ks))
        if value is None:
            return NOT_FOUND
        self.give(value, ret_ptr, ret_size)
        return OK

    def import_proxy_add_header_map_value(self, map_type, kp, ks, vp, vs):
        self.maps(map_type).setdefault(map_type, []).append((self.key(kp, ks), self.read(vp, vs)))
        return OK

    def import_proxy_replace_header_map_value(self, map_type, kp, ks, vp, vs):
        key, maps = self.key(kp, ks), self.maps(map_type)
        maps[map_type] = [p for p in maps.get(map_type, []) if p[0] != key] + [(key, self.read(vp, vs))]
        return OK

    def import_proxy_remove_header_map_value(self, map_type, kp, ks):
        key, maps = self.key(kp, ks), self.maps(map_type)
        maps[map_type] = [p for p in maps.get(map_type, []) if p[0] != key]
        return OK

    def import_proxy_get_header_map_pairs(self, map_type, ret_ptr, ret_size):
        self.give(serialize(self.maps(map_type).get(map_type, [])), ret_ptr, ret_size)
        return OK

    def import_proxy_set_header_map_pairs(self, map_type, ptr, size):
        self.maps(map_type)[map_type] = [(k.lower(), v) for k, v in deserialize(self.read(ptr, size))]
        return OK

    def import_proxy_get_buffer_bytes(self, buffer_type, start, length, ret_ptr, ret_size):
        if buffer_type == REDIS_RESPONSE:
            # Envoy serves it from the root context whatever the effective context, and it is
            # empty outside the callback: Ok with nothing (cpp-host get_buffer_bytes).
            data = self.redis.reply[start:start + length]
            if not data:
                self.write_u32(0, ret_ptr)
                self.write_u32(0, ret_size)
                return OK
            self.give(data, ret_ptr, ret_size)
            return OK
        if buffer_type not in self.buffers:
            return NOT_FOUND
        end = None if length < 0 else start + length  # an i32 of -1: the SDK asks for usize::MAX
        self.give(self.buffers[buffer_type][start:end], ret_ptr, ret_size)
        return OK

    def import_proxy_set_buffer_bytes(self, buffer_type, start, length, ptr, size):
        old = self.buffers.get(buffer_type, b"")
        data = self.read(ptr, size)
        # Envoy's three forms: prepend (0, 0), replace (0, len), append (start >= len).
        self.buffers[buffer_type] = data + old if length == 0 and start == 0 else (
            old + data if start >= len(old) else data)
        return OK

    def import_proxy_http_call(self, *args):
        self.next_http_call += 4
        self.write_u32(self.next_http_call, args[-1])
        self.http_calls.append(self.next_http_call)
        return OK

    def import_proxy_define_metric(self, _kind, _ptr, _size, ret_id):
        self.write_u32(1, ret_id)
        return OK

    def import_proxy_record_metric(self, *_):
        return OK

    def import_proxy_increment_metric(self, *_):
        return OK

    def import_proxy_send_local_response(self, status, _dp, _ds, bp, bs, hp, hs, _grpc):
        stream = self.stream_or_root()
        headers = [(k.lower(), v) for k, v in deserialize(self.read(hp, hs))] if hs else []
        stream.local = (status, headers, self.read(bp, bs))
        return OK

    def import_proxy_continue_stream(self, stream_type):
        self.stream_or_root().resumed[stream_type] = True
        return OK

    def import_proxy_set_effective_context(self, context_id):
        live = context_id == ROOT_CONTEXT or (self.stream and context_id == self.stream.id)
        if not live:
            return BAD_ARGUMENT  # cpp-host set_effective_context: no such context
        self.effective = context_id
        return OK

    def import_proxy_get_current_time_nanoseconds(self, ret_ptr):
        self.memory.write(self.store, struct.pack("<Q", self.clock()), ret_ptr)
        return OK

    def import_proxy_set_tick_period_milliseconds(self, period):
        self.tick_ms = period
        return OK

    def import_proxy_done(self):
        return OK

    def import_proxy_redis_init(self, cp, cs, up, us, pp, ps, timeout_ms):
        return self.redis.init(self.read(cp, cs).decode(errors="replace"), self.read(up, us),
                               self.read(pp, ps), timeout_ms)

    def import_proxy_redis_call(self, cp, cs, qp, qs, token_ptr):
        self.write_u32(0, token_ptr)
        status, token = self.redis.call(self.read(cp, cs).decode(errors="replace"), self.read(qp, qs))
        self.write_u32(token, token_ptr)
        return status

    def deliver_redis(self, token, status, reply):
        """proxy_on_redis_call_response on the root context, buffer 9 holding `reply` during it."""
        self.redis.reply = reply
        try:
            self.call("proxy_on_redis_call_response", ROOT_CONTEXT, token, status, len(reply))
        finally:
            self.redis.reply = b""


def resp_command(*args):
    """A command as RESP: an array of bulk strings."""
    out = b"*%d\r\n" % len(args)
    for a in args:
        a = as_bytes(a)
        out += b"$%d\r\n%s\r\n" % (len(a), a)
    return out


class ProtocolError(Exception):
    pass


def resp_end(buf, at=0):
    """Where the RESP2 value starting at `at` ends, or None when `buf` doesn't hold all of it
    yet. Only RESP2's five types, as Envoy's raw decoder (codec_impl.cc RawDecoderImpl)."""
    if at >= len(buf):
        return None
    line = buf.find(b"\r\n", at)
    if line < 0:
        return None
    kind, text = buf[at:at + 1], buf[at + 1:line]
    if kind in (b"+", b"-"):
        return line + 2
    try:
        n = int(text)
    except ValueError:
        raise ProtocolError(f"bad length {text!r}")
    if kind == b":":
        return line + 2
    if kind == b"$":
        if n < 0:
            return line + 2
        end = line + 2 + n + 2
        return end if len(buf) >= end else None
    if kind == b"*":
        end = line + 2
        for _ in range(max(n, 0)):
            end = resp_end(buf, end)
            if end is None:
                return None
        return end
    raise ProtocolError(f"invalid value type {kind!r}")


class RedisCluster:
    """One cluster's Redis client: its address, its configuration (`proxy_redis_init`'s, or
    Envoy's defaults before any: 1000 ms, no AUTH, no db) and its one connection."""

    def __init__(self, address):
        self.address = address
        self.config = (b"", b"", 1000, None)  # username, password, op timeout (ms), db
        self.connection = None


class Connection:
    """A connection to Redis, made lazily by the first call, as Envoy's raw client does
    (higress-group/envoy raw_client_impl.cc): AUTH and SELECT go first and their replies are
    dropped; one timer, the connect timeout until connected, then the op timeout while
    requests are pending (re-armed by each reply); when it fires, or the connection fails,
    every pending request fails."""

    def __init__(self, cluster, connect_timeout_ms):
        user, password, self.timeout_ms, db = cluster.config
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setblocking(False)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.connected = False
        self.failed = self.sock.connect_ex(cluster.address) not in (0, errno.EINPROGRESS)
        self.out = bytearray()
        self.inbox = bytearray()
        self.pending = collections.deque()  # tokens; None for AUTH/SELECT, whose replies drop
        self.deadline = time.monotonic() + connect_timeout_ms / 1000
        if user:
            self.send(None, resp_command("AUTH", user, password))
        elif password:
            self.send(None, resp_command("AUTH", password))
        if db is not None:
            self.send(None, resp_command("SELECT", db))

    def send(self, token, query):
        self.out += query
        self.pending.append(token)
        if self.connected and len(self.pending) == 1:
            self.arm()

    def arm(self):
        self.deadline = time.monotonic() + self.timeout_ms / 1000 if self.pending else None


class RedisClient:
    """Higress's `proxy_redis_init` / `proxy_redis_call` (higress-group/envoy
    source/extensions/common/wasm/context.cc, source/common/redis/async_client_impl.cc) over
    real sockets: `clusters` maps each cluster name to (host, port), or None for a cluster
    without endpoints. Nothing reaches the plugin from inside an import: replies and failures
    are delivered by `poll`, between calls into the plugin, as Envoy defers them."""

    def __init__(self, host, clusters, connect_timeout_ms):
        self.host = host
        self.clusters = {name: RedisCluster(address) for name, address in clusters.items()}
        self.connect_timeout_ms = connect_timeout_ms
        self.reply = b""
        self.selector = selectors.DefaultSelector()
        self.closed = []  # connections closed with requests pending, to fail
        self.inits = []  # each proxy_redis_init's (cluster, username, password, timeout_ms)

    def add_cluster(self, name, address):
        """The cluster manager learns a cluster, or a new version of it (xDS): Envoy makes
        the thread-local cluster entry, and its Redis client, afresh, with the default
        configuration (no AUTH: where Higress's NOAUTH errors come from)."""
        if name in self.clusters:
            self.close(self.clusters[name])
        self.clusters[name] = RedisCluster(address)

    def cluster(self, name):
        """The cluster of `name` (Envoy looks up what is before `?`), or None."""
        return self.clusters.get(name.split("?", 1)[0])

    def init(self, name, user, password, timeout_ms):
        self.inits.append((name, user, password, timeout_ms))
        cluster = self.cluster(name)
        if cluster is None:
            return BAD_ARGUMENT
        params = urllib.parse.parse_qs(name.partition("?")[2])
        db = params["db"][-1].encode() if "db" in params else None
        config = (user, password, timeout_ms, db)
        # Newer Higress Envoy: the same configuration again changes nothing (higress #4086);
        # another one closes the connection, failing what is pending on it.
        if config != cluster.config:
            cluster.config = config
            self.close(cluster)
        return OK

    def call(self, name, query):
        """Returns (status, token); the reply comes later, from `poll`."""
        cluster = self.cluster(name)
        if cluster is None:
            return BAD_ARGUMENT, 0
        if cluster.address is None:
            return INTERNAL_FAILURE, 0  # "no available host"
        if cluster.connection is None:
            cluster.connection = Connection(cluster, self.connect_timeout_ms)
            self.selector.register(cluster.connection.sock, selectors.EVENT_WRITE, cluster)
        self.host.next_redis_call += 4
        token = self.host.next_redis_call
        cluster.connection.send(token, query)
        return OK, token

    def in_flight(self):
        conns = [c.connection for c in self.clusters.values() if c.connection] + self.closed
        return any(t is not None for c in conns for t in c.pending)

    def close(self, cluster):
        conn, cluster.connection = cluster.connection, None
        if conn:
            self.selector.unregister(conn.sock)
            conn.sock.close()
            self.closed.append(conn)

    def poll(self):
        """Waits for I/O or a timer and delivers what came: replies in order, failures of a
        closed connection's requests."""
        if not self.closed:
            live = [c for c in self.clusters.values() if c.connection]
            for cluster in live:
                conn = cluster.connection
                if conn.failed:
                    self.close(cluster)
                    continue
                want = selectors.EVENT_READ if conn.connected else 0
                if conn.out or not conn.connected:
                    want |= selectors.EVENT_WRITE
                self.selector.modify(conn.sock, want, cluster)
            deadlines = [c.connection.deadline for c in live if c.connection and c.connection.deadline]
            timeout = max(0, min(deadlines) - time.monotonic()) if deadlines else None
            for key, events in self.selector.select(timeout) if self.selector.get_map() else ():
                cluster = key.data
                conn = cluster.connection
                if conn is None or conn.sock is not key.fileobj:
                    continue  # closed by a callback run for an earlier event
                try:
                    if events & selectors.EVENT_WRITE:
                        if not conn.connected:
                            err = conn.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                            if err:
                                raise OSError(err, os.strerror(err))
                            conn.connected = True
                            conn.arm()
                        if conn.out:
                            del conn.out[:conn.sock.send(conn.out)]
                    if events & selectors.EVENT_READ:
                        data = conn.sock.recv(65536)
                        if not data:
                            raise OSError("closed by Redis")
                        conn.inbox += data
                        self.take_replies(cluster, conn)
                except (OSError, ProtocolError):
                    self.close(cluster)
            now = time.monotonic()
            for cluster in self.clusters.values():
                conn = cluster.connection
                if conn and conn.deadline is not None and now >= conn.deadline:
                    self.close(cluster)  # the connect or op timeout
        while self.closed:
            conn = self.closed.pop(0)
            for token in conn.pending:
                if token is not None:
                    self.host.deliver_redis(token, REDIS_NETWORK_ERROR, b"")

    def take_replies(self, cluster, conn):
        while conn.pending and cluster.connection is conn:
            end = resp_end(conn.inbox)
            if end is None:
                return
            reply = bytes(conn.inbox[:end])
            del conn.inbox[:end]
            token = conn.pending.popleft()
            conn.arm()
            if token is not None:
                self.host.deliver_redis(token, REDIS_OK, reply)
