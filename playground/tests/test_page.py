#!/usr/bin/env python3
"""The playground page in a real browser: Playwright (PyPI) driving Debian's Chromium.

Serves target/playground/ (built by tools/build-playground.sh) with `proxy-rhai playground
--port 0`, loads the page and checks what a person would see: every example runs and shows
its trace and the client's answer, a compile error is shown at its line, an endless loop ends
with the operations limit while the page stays responsive, the wall-clock backstop restarts
the worker, a shared link brings the same state and result back, "copy as test" gives a test
case, and the API help answers. Prints the page's load time and each example's run time (not
asserted), and leaves a screenshot in target/playground-test/.

    python3 playground/tests/test_page.py [--binary target/debug/proxy-rhai]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "target" / "playground-test"
# Without the background-networking flags Chromium keeps trying hosts this machine can't
# reach; the sandbox needs privileges a CI container doesn't give, and a container's /dev/shm
# may be too small for its shared memory.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-dev-shm-usage",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
WAIT_MS = 15000
SCRIPT_TEXT = "document.querySelector('#script-editor .cm-content').innerText"


class Server:
    """`proxy-rhai playground --port 0`: serves the page on 127.0.0.1, the URL on its first line."""

    def __init__(self, binary):
        self.process = subprocess.Popen(
            [binary, "playground", "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=ROOT,
        )
        first = self.process.stdout.readline().strip()
        if not first.startswith("http://127.0.0.1:"):
            self.process.kill()
            raise RuntimeError(f"proxy-rhai playground printed {first!r}: {self.process.stderr.read()}")
        self.url = first.split()[0]

    def close(self):
        self.process.terminate()
        self.process.wait(timeout=10)


class Page:
    """The page, with the few things the checks do on it."""

    def __init__(self, context, url):
        self.page = context.new_page()
        self.page.set_default_timeout(WAIT_MS)
        self.errors = []
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(f"console: {m.text}"))
        self.load_ms = self.load(url)

    def load(self, url):
        """Loads the page: the milliseconds from navigation until it is ready to run, and until
        its document and scripts were loaded."""
        self.page.goto(url)
        self.page.wait_for_selector("body[data-ready=true]")
        return self.page.evaluate(
            "[window.playgroundReadyAt, performance.getEntriesByType('navigation')[0].domContentLoadedEventEnd]"
        )

    def runs(self):
        return int(self.page.evaluate("document.body.dataset.runs || '0'"))

    def run(self, start=None):
        """Runs (by clicking Run, or by `start`) and waits for the outcome."""
        before = self.runs()
        (start or (lambda: self.page.click("#run")))()
        self.page.wait_for_function(f"Number(document.body.dataset.runs || 0) > {before}")
        return self.page.evaluate("window.playgroundLastRun")

    def example(self, name):
        """Loads an example, which runs it, and waits for the outcome."""
        return self.run(lambda: self.page.click(f"#examples button[data-name={name}]"))

    def text(self, selector):
        return self.page.inner_text(selector)

    def type_into(self, editor, text):
        """Replaces an editor's text by typing, as a person would, and checks it took."""
        content = self.page.locator(f"{editor} .cm-content")
        content.click()
        content.press("Control+A")
        content.press("Delete")
        self.page.keyboard.insert_text(text)
        typed = content.inner_text().replace("\u00a0", " ")
        assert typed.strip() == text.strip(), f"{editor} holds {typed!r} after typing {text!r}"

    def set_script(self, text):
        self.type_into("#script-editor", text)

    def set_config(self, text):
        self.page.click("[data-tab=config]")
        self.type_into("#config-editor", text)
        self.page.click("[data-tab=request]")


def contains(haystack, needle, what):
    assert needle in haystack, f"{what}: {needle!r} not in {haystack[:2000]!r}"


def check_examples(page, manifest, timings):
    for example in manifest:
        name = example["name"]
        outcome = page.example(name)
        # The first run of a script also compiles the module's code it reaches; again is warm.
        timings[name] = (outcome["ms"], page.run()["ms"])
        expect = example["expect"]
        answer = outcome["answer"]
        assert not answer.get("error"), f"{name}: {answer.get('error')}"
        assert answer["errors"] == [], f"{name}: script errors {answer['errors']}"
        status = page.text("#client-status")
        assert status == str(expect["status"]), f"{name}: the client got {status}, expected {expect['status']}"
        trace = page.text("#out-trace")
        contains(trace, expect["trace"], f"{name}: trace")
        if "phase" in expect:
            # The callback's heading comes before the calls it made.
            # (headings are set in capitals by the page's style)
            heading = trace.lower().find(expect["phase"].lower())
            assert 0 <= heading < trace.lower().find(expect["trace"].lower()), f"{name}: {expect['trace']!r} is not under {expect['phase']!r}:\n{trace}"
        client = page.text("#out-client")
        if "header" in expect:
            contains(client, expect["header"][0], f"{name}: client headers")
            contains(client, expect["header"][1], f"{name}: client headers")
        if "body" in expect:
            contains(client, expect["body"], f"{name}: client body")
        if "upstream_header" in expect:
            upstream = page.text("#out-upstream")
            contains(upstream, expect["upstream_header"][0], f"{name}: upstream headers")
            contains(upstream, expect["upstream_header"][1], f"{name}: upstream headers")
        if "filter_state" in expect:
            contains(page.text("#out-filter-state"), "\t".join(expect["filter_state"]), f"{name}: filter state")
        if "log" in expect:
            contains(page.text("#out-log"), expect["log"], f"{name}: log")
        if "metric" in expect:
            metric, value = expect["metric"]
            contains(page.text("#out-metrics"), f"{metric}\t{value}", f"{name}: metrics")


def check_compile_error(page):
    page.example("hello")
    page.set_script('fn on_request_headers() {\n    add_request_header("a", "b");\n    let x = ;\n}\n')
    page.page.wait_for_function(
        "document.getElementById('check-status').textContent.includes('error')"
    )
    contains(page.text("#check-status"), "line 3, column", "the compile error's position")
    # The editor marks the error on line 3 (its gutter shows the line numbers).
    marked = page.page.evaluate(
        """() => {
            const range = document.querySelector('#script-editor .cm-lintRange-error');
            if (!range) return null;
            const lines = [...document.querySelectorAll('#script-editor .cm-line')];
            return lines.findIndex((l) => l.contains(range)) + 1;
        }"""
    )
    assert marked == 3, f"the error is underlined on line {marked}, expected 3"
    outcome = page.run()
    assert outcome["answer"].get("line") == 3, f"run's answer: {outcome['answer']}"
    contains(page.text("#summary"), "line 3", "the run's failure")


def check_http_message(page):
    """The request edited as an HTTP/1.1 message reaches the upstream as written (run with
    Ctrl-Enter)."""
    page.example("hello")
    page.page.check("input[name=request-mode][value=message]")
    contains(page.page.input_value("#request-message"), "GET /greet HTTP/1.1", "the form as a message")
    page.page.fill("#request-message", "POST /orders?x=1 HTTP/1.1\nHost: shop.example.com\nX-Order: 42\n\n{\"id\": 42}")
    # Ctrl-Enter runs from anywhere on the page, here the message's box.
    outcome = page.run(lambda: page.page.press("#request-message", "Control+Enter"))
    upstream = page.text("#out-upstream")
    contains(upstream, "POST /orders?x=1", "the upstream's request line")
    contains(upstream, "x-order\t42", "the upstream's headers")
    contains(upstream, "shop.example.com", "the upstream's authority")
    assert outcome["answer"]["upstream"]["body"] == '{"id": 42}', outcome["answer"]["upstream"]
    page.page.check("input[name=request-mode][value=form]")
    assert page.page.input_value("#req-path") == "/orders?x=1", "the message back as fields"


def check_endless_loop(page):
    page.example("hello")
    page.set_script("fn on_request_headers() {\n    let n = 0;\n    loop { n += 1; }\n}\n")
    outcome = page.run()
    contains(page.text("#errors"), "max_operations", "the endless loop's error")
    print(f"  endless loop stopped by the operations limit in {outcome['ms']:.1f} ms")
    # Still responsive: an example runs right after.
    outcome = page.example("no_config")
    assert page.text("#client-status") == "200", outcome


def check_backstop(context, url):
    """A run past the page's wall-clock backstop (shortened here to 300 ms) ends the worker."""
    page = Page(context, f"{url}?backstop_ms=300")
    page.example("hello")
    page.set_config('{"limits": {"max_operations": 100000000}}')
    # About ten seconds' work: the operations limit would end it long after the backstop.
    page.set_script("fn on_request_headers() {\n    let n = 0;\n    loop { n += 1; }\n}\n")
    outcome = page.run()
    contains(page.text("#summary"), "backstop", f"the backstop's message (the run's answer: {outcome})")
    outcome = page.example("no_config")
    assert page.text("#client-status") == "200", outcome
    assert not page.errors, page.errors
    page.page.close()


def check_share(context, page):
    page.example("token_callout")
    page.page.fill("#req-path", "/api/shared?x=1")
    before = page.run()
    page.page.click("#share")
    page.page.wait_for_selector("#output[open]")
    link = page.page.input_value("#output-text")
    assert "#s=" in link, link
    page.page.keyboard.press("Escape")
    other = Page(context, link)
    path = other.page.input_value("#req-path")
    assert path == "/api/shared?x=1", f"the shared link's path is {path!r}; status: {other.text('#status')}"
    script = other.page.evaluate(SCRIPT_TEXT)
    contains(script, "http_get(c.cluster", "the shared script")
    after = other.run()
    assert after["answer"]["response"] == before["answer"]["response"], "the same answer"
    assert after["answer"]["upstream"] == before["answer"]["upstream"], "the same upstream request"
    assert not other.errors, other.errors
    other.page.close()


def check_copy_as(page, binary):
    page.example("token_callout")
    page.page.click("#copy-test")
    page.page.wait_for_selector("#output[open]")
    test = page.page.input_value("#output-text")
    contains(test, "fn test_", "copy as test")
    page.page.keyboard.press("Escape")
    # The case passes when run beside the script, as the page says to save it.
    with tempfile.TemporaryDirectory(prefix="playground-case-") as folder:
        (Path(folder) / "token_callout.rhai").write_text((ROOT / "scripts" / "token_callout.rhai").read_text())
        (Path(folder) / "token_callout.test.rhai").write_text(test)
        result = subprocess.run([binary, "test", folder], capture_output=True, text=True)
        assert result.returncode == 0 and "1 passed" in result.stdout, f"{test}\n{result.stdout}{result.stderr}"
    page.page.click("#copy-deploy")
    page.page.wait_for_selector("#output[open]")
    contains(page.page.input_value("#output-text"), "envoy.filters.http.wasm", "copy as deploy")
    page.page.keyboard.press("Escape")


def check_api_help(page):
    page.example("hello")
    page.page.click("#script-editor .cm-content")
    page.page.keyboard.press("Control+End")
    page.page.keyboard.insert_text("\nfn helper() {\n    add_req")
    page.page.keyboard.press("Control+Space")
    page.page.wait_for_selector(".cm-tooltip-autocomplete")
    contains(page.text(".cm-tooltip-autocomplete"), "add_request_header", "completions")
    page.page.locator(".cm-completionLabel", has_text=re.compile("^add_request_header$")).click()
    try:
        page.page.wait_for_function("document.getElementById('api-doc').textContent.includes('add_request_header')")
    except Exception:
        raise AssertionError(f"the doc panel shows {page.text('#api-doc')[:300]!r}; the script ends "
                             f"{page.page.evaluate(SCRIPT_TEXT)[-60:]!r}")
    contains(page.text("#api-doc"), "add_request_header(name", "the doc under the cursor")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--binary", default=str(ROOT / "target" / "debug" / "proxy-rhai"))
    args = parser.parse_args()
    manifest = json.loads((ROOT / "target" / "playground" / "examples.json").read_text())["examples"]
    OUT.mkdir(parents=True, exist_ok=True)
    server = Server(args.binary)
    passed, failed = 0, 0
    timings = {}
    try:
        with sync_playwright() as p, tempfile.TemporaryDirectory(prefix="playground-chromium-") as profile:
            context = p.chromium.launch_persistent_context(
                profile,
                executable_path="/usr/bin/chromium",
                headless=True,
                args=CHROMIUM_ARGS,
                viewport={"width": 1440, "height": 900},
            )
            page = Page(context, server.url)
            load_ms = page.load_ms
            checks = [
                ("every example runs and shows its trace and answer", lambda: check_examples(page, manifest, timings)),
                ("a compile error is shown at its line", lambda: check_compile_error(page)),
                ("the request as an HTTP message", lambda: check_http_message(page)),
                ("an endless loop ends with the operations limit", lambda: check_endless_loop(page)),
                ("the backstop restarts a worker that runs too long", lambda: check_backstop(context, server.url)),
                ("a shared link brings back the state and result", lambda: check_share(context, page)),
                ("copy as test (a passing test case) and copy as deploy", lambda: check_copy_as(page, args.binary)),
                ("completions and the doc under the cursor", lambda: check_api_help(page)),
            ]
            for name, check in checks:
                # A check that failed may have left the output dialog open over the page.
                page.page.evaluate("document.getElementById('output').close()")
                try:
                    check()
                    passed += 1
                    print(f"ok: {name}")
                except Exception:
                    failed += 1
                    print(f"FAILED: {name}")
                    traceback.print_exc(file=sys.stdout)
                    page.page.screenshot(path=str(OUT / f"failed-{passed + failed}.png"))
            if page.errors:
                failed += 1
                print(f"FAILED: errors on the page: {page.errors}")
            else:
                passed += 1
                print("ok: no errors on the page (thrown or logged)")
            page.example("token_callout")
            page.page.screenshot(path=str(OUT / "playground.png"))
            context.close()
    finally:
        server.close()
    ready, parsed = load_ms
    print(f"page load: ready to run {ready:.0f} ms after navigation (module compiled, API loaded; "
          f"DOMContentLoaded at {parsed:.0f} ms)")
    for name, (first, again) in timings.items():
        print(f"run {name}: {first:.1f} ms, again {again:.1f} ms")
    for which, column in (("first", 0), ("again", 1)):
        values = sorted(t[column] for t in timings.values())
        if values:
            print(f"runs ({which}): median {values[len(values) // 2]:.1f} ms, max {values[-1]:.1f} ms")
    print(f"screenshot: {(OUT / 'playground.png').relative_to(ROOT)}")
    print(f"playground: {passed} passed, {failed} failed")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
