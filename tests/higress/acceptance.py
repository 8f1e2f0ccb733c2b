#!/usr/bin/env python3
"""The Higress build on a host that implements Higress's Redis functions as Higress's Envoy
does (tools/proxy_wasm_host.py), over real redis-servers this starts: the example scripts and
`redis_call`'s replies, errors and failures, and the Redis state they leave.

    python3 tests/higress/acceptance.py [--higress FILE] [--default FILE] [CASE...]

The artifacts default to PROXY_RHAI_HIGRESS_WASM and PROXY_RHAI_WASM, else
target/proxy_rhai_higress.wasm and target/proxy_rhai.wasm (tools/build-wasm.sh makes both).
`cargo test --test higress` runs it. Exits 1 when a case fails.
"""
import argparse
import json
import os
import pathlib
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tools"))
from proxy_wasm_host import Host, compiled, resp_command, resp_end  # noqa: E402

CLUSTER = "outbound|6379||redis.dns"
PASSWORD = "s3cret-acceptance"
WRONG_PASSWORD = "not-the-password"
USER, USER_PASSWORD = "gateway", "gateway-pw"

# A script whose every request runs one command given in headers: `x-cluster`, `x-command`
# (a JSON array); the answer's body is the reply as JSON, `x-type` its Rhai type.
DIRECT = r'''
fn on_request_headers() {
    let cluster = get_request_header("x-cluster");
    let command = parse_json(get_request_header("x-command"));
    try {
        redis_call(cluster, command, |reply| {
            send_http_response(200, #{ "x-type": type_of(reply) }, to_json(reply));
        });
    } catch (e) {
        send_http_response(503, #{ "x-type": "thrown" }, `${e}`);
    }
}
'''


class Redis:
    """A redis-server of this test's own, on a free loopback port, without persistence."""

    def __init__(self, *args):
        self.password = args[args.index("--requirepass") + 1] if "--requirepass" in args else None
        self.dir = tempfile.mkdtemp(prefix="proxy-rhai-redis-")
        # A port free a moment ago may be taken by the time Redis binds it: then another.
        for _ in range(5):
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                self.port = s.getsockname()[1]
            self.process = subprocess.Popen(
                ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
                 "--appendonly", "no", "--dir", self.dir, *args],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            for _ in range(1000):
                try:
                    self.command("PING")
                    return
                except OSError:
                    if self.process.poll() is not None:
                        break
                    time.sleep(0.01)
            self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)
        raise RuntimeError("redis-server did not start")

    @property
    def address(self):
        return ("127.0.0.1", self.port)

    def command(self, *args, db=0):
        """Runs one command on a connection of its own; returns the reply (bytes, int, list,
        None) or raises on an error reply."""
        with socket.create_connection(self.address, timeout=5) as s:
            prelude = [resp_command("AUTH", self.password)] if self.password else []
            prelude += [resp_command("SELECT", db)] if db else []
            s.sendall(b"".join(prelude) + resp_command(*args))
            buf = b""
            replies = []
            while len(replies) < len(prelude) + 1:
                end = resp_end(buf)
                if end is None:
                    chunk = s.recv(65536)
                    if not chunk:
                        raise OSError("closed")
                    buf += chunk
                    continue
                replies.append(parse(buf[:end]))
                buf = buf[end:]
            return replies[-1]

    def stop(self):
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait()


class RedisError(Exception):
    pass


def parse(data):
    value, _ = parse_at(data, 0)
    if isinstance(value, RedisError):
        raise value
    return value


def parse_at(data, at):
    line = data.index(b"\r\n", at)
    kind, text, at = data[at:at + 1], data[at + 1:line], line + 2
    if kind == b"+":
        return text, at
    if kind == b"-":
        return RedisError(text.decode()), at
    if kind == b":":
        return int(text), at
    if kind == b"$":
        n = int(text)
        return (None, at) if n < 0 else (data[at:at + n], at + n + 2)
    items = []
    for _ in range(max(int(text), 0)):
        item, at = parse_at(data, at)
        items.append(item)
    return (None if int(text) < 0 else items), at


class Env:
    """The servers, the artifacts, and plugins on hosts."""

    def __init__(self, higress, default):
        self.higress, self.default = higress, default
        self.servers = []
        try:
            self.open = self.start()
            self.auth = self.start("--requirepass", PASSWORD)
            self.auth.command("ACL", "SETUSER", USER, "on", f">{USER_PASSWORD}", "~*", "&*", "+@all")
            self.doomed = self.start()
        except BaseException:
            self.stop()
            raise

    def start(self, *args):
        self.servers.append(Redis(*args))
        return self.servers[-1]

    def clusters(self):
        """What the host's cluster manager knows: name → address."""
        return {
            CLUSTER: self.open.address,
            "outbound|6379||slow.dns": self.open.address,
            "outbound|6379||db2.dns": self.open.address,
            "outbound|6379||auth.dns": self.auth.address,
            "outbound|6379||user.dns": self.auth.address,
            "outbound|6379||wrongpw.dns": self.auth.address,
            "outbound|6379||doomed.dns": self.doomed.address,
            "outbound|6379||no-endpoints.dns": None,
        }

    def plugin(self, script, redis=None, config=None, wasm=None, clusters=None, clock=time.time_ns,
               **more):
        """A host running `script` with the configuration's "redis" key `redis`; fails the case
        when the plugin refuses the configuration."""
        host = Host(wasm or self.higress, redis=self.clusters() if clusters is None else clusters,
                    echo_level=None, clock=clock)
        configuration = {"script": script, **more}
        if redis is not None:
            configuration["redis"] = redis
        if config is not None:
            configuration["config"] = config
        if not host.start(json.dumps(configuration)):
            raise AssertionError(f"configuration refused: {host.logs}")
        return host

    def stop(self):
        for server in self.servers:
            server.stop()
            shutil.rmtree(server.dir, ignore_errors=True)


def call(host, cluster, *command):
    """Runs `command` through the DIRECT script; returns (x-type, the body as JSON or text)."""
    answer = host.exchange([(":method", "GET"), (":path", "/"), (":authority", "gateway"),
                            ("x-cluster", cluster), ("x-command", json.dumps(list(command)))])
    assert not answer.stalled, "the request hangs"
    assert answer.local, f"the script did not answer: {answer}"
    kind = answer.header("x-type")
    body = answer.body.decode()
    return kind, (json.loads(body) if kind != "thrown" else body)


def expect(got, want, what=""):
    assert got == want, f"{what}: got {got!r}, want {want!r}"


CASES = []


def case(fn):
    CASES.append(fn)
    return fn


@case
def only_the_higress_build_imports_redis(env):
    names = lambda wasm: {i.name for i in compiled(wasm)[1].imports}  # noqa: E731
    exports = {e.name for e in compiled(env.higress)[1].exports}
    expect(sorted(n for n in names(env.default) if n.startswith("proxy_redis")), [], "default build")
    expect(sorted(n for n in names(env.higress) if n.startswith("proxy_redis")),
           ["proxy_redis_call", "proxy_redis_init"], "Higress build")
    assert "proxy_on_redis_call_response" in exports, "the Higress build exports no callback"


@case
def default_build_says_the_higress_build_is_needed(env):
    host = env.plugin(DIRECT, wasm=env.default, clusters={})
    kind, body = call(host, CLUSTER, "PING")
    expect(kind, "thrown", "a script error")
    assert "Higress build (proxy_rhai_higress.wasm)" in body, body


@case
def configure_initialises_each_cluster(env):
    host = env.plugin(DIRECT, redis={
        CLUSTER: {},
        "outbound|6379||auth.dns": {"password": PASSWORD, "timeout_ms": 700},
        "outbound|6379||user.dns": {"username": USER, "password": USER_PASSWORD},
        "outbound|6379||db2.dns": {"database": 2},
    })
    inits = {name.split("?")[0]: (name, user, password, timeout)
             for name, user, password, timeout in host.redis.inits}
    expect(sorted(inits), sorted([CLUSTER, "outbound|6379||auth.dns", "outbound|6379||user.dns",
                                  "outbound|6379||db2.dns"]), "clusters initialised")
    expect(inits["outbound|6379||auth.dns"][1:], (b"", PASSWORD.encode(), 700), "auth.dns")
    expect(inits["outbound|6379||user.dns"][1:3], (USER.encode(), USER_PASSWORD.encode()), "user.dns")
    assert "db=2" in inits["outbound|6379||db2.dns"][0], f"no db=2 in {inits['outbound|6379||db2.dns'][0]}"


@case
def replies_become_rhai_values(env):
    host = env.plugin(DIRECT, redis={CLUSTER: {}})
    env.open.command("DEL", "acc:s", "acc:n", "acc:l", "acc:missing")
    expect(call(host, CLUSTER, "SET", "acc:s", "bar"), ("string", "OK"), "SET")
    expect(call(host, CLUSTER, "GET", "acc:s"), ("string", "bar"), "GET")
    expect(call(host, CLUSTER, "INCR", "acc:n"), ("i64", 1), "INCR")
    expect(call(host, CLUSTER, "INCRBY", "acc:n", 41), ("i64", 42), "INCRBY with an int argument")
    expect(call(host, CLUSTER, "GET", "acc:missing"), ("()", None), "nil")
    expect(call(host, CLUSTER, "RPUSH", "acc:l", "a", "b", 3), ("i64", 3), "RPUSH")
    expect(call(host, CLUSTER, "LRANGE", "acc:l", 0, -1), ("array", ["a", "b", "3"]), "LRANGE")
    expect(call(host, CLUSTER, "HGET", "acc:l", "f")[1]["kind"], "redis", "WRONGTYPE")
    kind, body = call(host, CLUSTER, "INCR", "acc:s")
    expect((kind, body), ("map", {"error": "ERR value is not an integer or out of range", "kind": "redis"}),
           "error reply")
    expect(env.open.command("GET", "acc:n"), b"42", "Redis state")
    expect(env.open.command("LRANGE", "acc:l", 0, -1), [b"a", b"b", b"3"], "Redis state")


@case
def everyday_forms_send_their_commands(env):
    script = f'''
    const C = "{CLUSTER}";
    fn on_request_headers() {{
        redis_set(C, "acc:form", "v1", |r1| {{
            redis_set(C, "acc:form:ttl", 7, 30, |r2| {{
                redis_get(C, "acc:form", |r3| {{
                    redis_incr(C, "acc:form:ttl", |r4| {{
                        redis_expire(C, "acc:form", 40, |r5| {{
                            send_http_response(200, [], to_json([r1, r2, r3, r4, r5]));
                        }});
                    }});
                }});
            }});
        }});
    }}'''
    host = env.plugin(script, redis={CLUSTER: {}})
    answer = request(host)
    expect(json.loads(answer.body), ["OK", "OK", "v1", 8, 1], "the replies")
    expect(env.open.command("GET", "acc:form:ttl"), b"8", "Redis state")
    assert 0 < env.open.command("TTL", "acc:form:ttl") <= 30, "SET with a ttl: EX"
    assert 30 < env.open.command("TTL", "acc:form") <= 40, "EXPIRE"


@case
def database_and_credentials_apply(env):
    host = env.plugin(DIRECT, redis={
        "outbound|6379||db2.dns": {"database": 2},
        "outbound|6379||auth.dns": {"password": PASSWORD},
        "outbound|6379||user.dns": {"username": USER, "password": USER_PASSWORD},
    })
    expect(call(host, "outbound|6379||db2.dns", "SET", "acc:db", "two"), ("string", "OK"), "SET in db 2")
    expect(env.open.command("GET", "acc:db", db=2), b"two", "the key is in db 2")
    expect(env.open.command("EXISTS", "acc:db"), 0, "and not in db 0")
    expect(call(host, "outbound|6379||auth.dns", "PING"), ("string", "PONG"), "password")
    expect(call(host, "outbound|6379||user.dns", "ACL", "WHOAMI"), ("string", USER), "username and password")


@case
def wrong_password_is_a_noauth_error_after_one_reinit(env):
    host = env.plugin(DIRECT, redis={"outbound|6379||wrongpw.dns": {"password": WRONG_PASSWORD}})
    before = len(host.redis.inits)
    kind, body = call(host, "outbound|6379||wrongpw.dns", "PING")
    expect(kind, "map", "NOAUTH reaches the callback")
    expect(body["kind"], "redis", "kind")
    assert body["error"].startswith("NOAUTH"), body
    # Higress's wrapper re-initialises on NOAUTH and sends the command once more.
    expect(len(host.redis.inits) - before, 1, "re-inits after NOAUTH")


@case
def cluster_update_loses_auth_and_the_plugin_reinitialises(env):
    host = env.plugin(DIRECT, redis={"outbound|6379||auth.dns": {"password": PASSWORD}})
    expect(call(host, "outbound|6379||auth.dns", "PING"), ("string", "PONG"), "authenticated")
    # xDS pushes the cluster again: its new Redis client has no password (Higress #2000).
    host.redis.add_cluster("outbound|6379||auth.dns", env.auth.address)
    expect(call(host, "outbound|6379||auth.dns", "PING"), ("string", "PONG"), "after the update")
    expect(host.redis.inits[-1][2], PASSWORD.encode(), "initialised again with the password")


@case
def timeout_reaches_the_callback_and_the_next_call_reconnects(env):
    host = env.plugin(DIRECT, redis={"outbound|6379||slow.dns": {"timeout_ms": 200}})
    kind, body = call(host, "outbound|6379||slow.dns", "BLPOP", "acc:never", 5)
    expect((kind, body["kind"]), ("map", "timeout"), "a timeout reaches the callback")
    expect(call(host, "outbound|6379||slow.dns", "PING"), ("string", "PONG"), "after the timeout")


@case
def redis_stopped_is_a_connection_error(env):
    host = env.plugin(DIRECT, redis={"outbound|6379||doomed.dns": {}})
    expect(call(host, "outbound|6379||doomed.dns", "PING"), ("string", "PONG"), "while it runs")
    env.doomed.stop()
    kind, body = call(host, "outbound|6379||doomed.dns", "PING")
    expect((kind, body.get("kind")), ("map", "connection"), "once stopped")


@case
def unknown_cluster_and_no_endpoints_answer(env):
    host = env.plugin(DIRECT, redis={"outbound|6379||late.dns": {}})
    # Higress's statuses: BadArgument for a cluster Envoy doesn't know (at init, again at the
    # call), InternalFailure for one without a host to send to.
    for cluster, status in (("outbound|6379||late.dns", "BadArgument"),
                            ("outbound|6379||no-endpoints.dns", "InternalFailure")):
        kind, body = call(host, cluster, "PING")
        expect(kind, "thrown", cluster)
        assert f"({status})" in body, body


@case
def init_is_retried_once_the_cluster_exists(env):
    clusters = env.clusters()
    late = "outbound|6379||late.dns"
    host = env.plugin(DIRECT, redis={late: {"timeout_ms": 900}}, clusters=clusters)
    expect([i[0].split("?")[0] for i in host.redis.inits], [late], "tried at configure")
    host.redis.add_cluster(late, env.open.address)
    expect(call(host, late, "PING"), ("string", "PONG"), "once the cluster exists")
    expect(len(host.redis.inits), 2, "initialised again")
    expect(host.redis.inits[-1][3], 900, "with its timeout")


@case
def a_reply_past_the_limits_is_answered_by_the_error_policy(env):
    host = env.plugin(DIRECT, redis={CLUSTER: {}}, limits={"max_string_size": 2048})
    env.open.command("SET", "acc:big", "x" * 4000)
    answer = host.exchange([(":method", "GET"), (":path", "/"), (":authority", "gateway"),
                            ("x-cluster", CLUSTER), ("x-command", '["GET", "acc:big"]')])
    expect((answer.status, answer.local), (500, True), "fail_closed's answer")
    assert any("limits.max_string_size (2048)" in m for _, m in host.logs), host.logs
    env.open.command("SET", "acc:big", "x" * 2000)
    expect(call(host, CLUSTER, "STRLEN", "acc:big"), ("i64", 2000), "the VM goes on")
    expect(len(call(host, CLUSTER, "GET", "acc:big")[1]), 2000, "within the limit, whole")


@case
def passwords_never_reach_a_log(env):
    host = env.plugin(DIRECT + "\nlog_warn(`redis: ${config()}`);", redis={
        "outbound|6379||auth.dns": {"password": PASSWORD},
        "outbound|6379||wrongpw.dns": {"password": WRONG_PASSWORD},
    }, config={"n": 1})
    call(host, "outbound|6379||wrongpw.dns", "PING")
    call(host, "outbound|6379||nowhere.dns", "PING")
    for _, message in host.logs:
        assert PASSWORD not in message and WRONG_PASSWORD not in message, message


def request(host, client=None):
    headers = [(":method", "GET"), (":path", "/"), (":authority", "gateway")]
    headers += [("x-api-key", client)] if client else []
    answer = host.exchange(headers, upstream=lambda headers, body: ([(":status", "200")], b"upstream"))
    assert not answer.stalled, answer
    return answer


class Clock:
    """The plugin's clock, still unless a test moves it: 30 s into the current minute."""

    def __init__(self):
        minute = 60 * 10**9
        self.now = time.time_ns() // minute * minute + minute // 2

    def __call__(self):
        return self.now

    def advance(self, ms):
        self.now += ms * 10**6


@case
def rate_limit_script_counts_in_redis(env):
    script = (ROOT / "scripts" / "redis_rate_limit.rhai").read_text()
    clock = Clock()
    host = env.plugin(script, redis={CLUSTER: {}}, config={"cluster": CLUSTER, "qpm": 3,
                                                           "keyPrefix": "acc:minute:"}, clock=clock)
    answers = [request(host) for _ in range(4)]
    expect([a.status for a in answers], [200, 200, 200, 429], "statuses")
    expect([a.header("calltimeleft") for a in answers], ["2", "1", "0", "0"], "callTimeLeft")
    expect(answers[3].body, b"Too many requests\n", "the 429's body")
    minute = str(clock.now // 10**9 // 60 * 60)
    expect({a.header("timestamp") for a in answers}, {minute}, "timeStamp: the minute")
    expect([a.upstream is not None for a in answers], [True, True, True, False], "what went upstream")
    key = f"acc:minute:{minute}"
    expect(env.open.command("GET", key), b"4", "the minute's count in Redis")
    ttl = env.open.command("TTL", key)
    assert 0 < ttl <= 60, f"TTL {ttl}"
    clock.advance(60_000)
    later = request(host)
    expect((later.status, later.header("calltimeleft")), (200, "2"), "the next minute")


@case
def token_bucket_script_runs_its_lua_in_redis(env):
    script = (ROOT / "scripts" / "redis_token_bucket.rhai").read_text()
    clock = Clock()
    host = env.plugin(script, redis={CLUSTER: {}}, config={"cluster": CLUSTER, "rate": 1, "burst": 2},
                      clock=clock)
    env.open.command("DEL", "bucket:acc-client")
    answers = [request(host, "acc-client") for _ in range(3)]
    expect([a.status for a in answers], [200, 200, 429], "statuses")
    expect([a.header("x-ratelimit-remaining") for a in answers[:2]], ["1", "0"], "remaining")
    expect(answers[2].header("retry-after"), "1", "retry-after")
    tokens, at = env.open.command("HMGET", "bucket:acc-client", "tokens", "at")
    expect((float(tokens), int(at)), (0.0, clock.now // 10**6), "the bucket in Redis")
    assert 0 < env.open.command("PTTL", "bucket:acc-client") <= 3000, "the bucket expires"
    clock.advance(1000)
    expect(request(host, "acc-client").status, 200, "a token a second later")
    expect(request(host, "another-client").status, 200, "each client its own bucket")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    target = ROOT / "target"
    ap.add_argument("--higress", default=os.environ.get("PROXY_RHAI_HIGRESS_WASM",
                                                         str(target / "proxy_rhai_higress.wasm")))
    ap.add_argument("--default", default=os.environ.get("PROXY_RHAI_WASM", str(target / "proxy_rhai.wasm")))
    ap.add_argument("cases", nargs="*")
    args = ap.parse_args()
    for wasm in (args.higress, args.default):
        if not os.path.isfile(wasm):
            sys.exit(f"{wasm} is missing: run tools/build-wasm.sh")
    env = Env(args.higress, args.default)
    failed = []
    try:
        for fn in CASES:
            if args.cases and fn.__name__ not in args.cases:
                continue
            try:
                fn(env)
                print(f"ok   {fn.__name__}")
            except Exception:
                failed.append(fn.__name__)
                print(f"FAIL {fn.__name__}\n{traceback.format_exc()}")
    finally:
        env.stop()
    print(f"{len(failed)} failed" if failed else "all passed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
