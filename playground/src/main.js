// The playground page: the editors, the request builder, running through the worker, and the
// outcome laid out for reading.
import { autocompletion, closeBrackets, closeBracketsKeymap, completionKeymap } from "@codemirror/autocomplete";
import { defaultKeymap, history, historyKeymap, indentWithTab } from "@codemirror/commands";
import { json, jsonParseLinter } from "@codemirror/lang-json";
import { HighlightStyle, bracketMatching, defaultHighlightStyle, indentOnInput, syntaxHighlighting } from "@codemirror/language";
import { tags } from "@lezer/highlight";
import { forceLinting, lintGutter, linter, setDiagnostics } from "@codemirror/lint";
import { highlightSelectionMatches, searchKeymap } from "@codemirror/search";
import { EditorState, StateEffect, StateField } from "@codemirror/state";
import {
  Decoration,
  EditorView,
  drawSelection,
  highlightActiveLine,
  highlightActiveLineGutter,
  hoverTooltip,
  keymap,
  lineNumbers,
} from "@codemirror/view";
import { BackstopError, Bridge } from "./bridge.js";
import { calloutLines, requestForm, requestFromMessage, requestJson, requestToMessage, responseForm, responseJson } from "./http.js";
import { apiCompletions, apiNames, docBody, markdown, rhai } from "./rhai.js";
import { decodeState, encodeState } from "./share.js";

const $ = (id) => document.getElementById(id);
const escape = (s) => String(s).replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

function setStatus(text, kind = "") {
  $("status").textContent = text;
  $("status").className = kind;
}

// `?backstop_ms=N` shortens the wall-clock backstop (the browser test uses it).
const backstopMs = Number(new URLSearchParams(location.search).get("backstop_ms")) || 5000;
const bridge = new Bridge("assets/worker.js", "playground.wasm", {
  timeoutMs: backstopMs,
  onRestart: (why) => setStatus(why, "bad"),
});

// ---- the script editor --------------------------------------------------------------------

/// Lines a run's script errors point at, highlighted until the script changes.
const setErrorLines = StateEffect.define();
const errorLines = StateField.define({
  create: () => Decoration.none,
  update(lines, tr) {
    for (const e of tr.effects) if (e.is(setErrorLines)) return e.value;
    return tr.docChanged ? Decoration.none : lines;
  },
  provide: (f) => EditorView.decorations.from(f),
});

/// A document position for a 1-based line and column (clamped to the document).
function position(doc, line, column) {
  if (!line) return 0;
  const l = doc.line(Math.min(Math.max(1, line), doc.lines));
  return Math.min(l.to, l.from + Math.max(0, (column ?? 1) - 1));
}

function diagnostics(doc, findings, severity) {
  return (findings ?? []).map((f) => {
    const from = position(doc, f.line, f.column);
    const word = doc.sliceString(from, from + 40).match(/^[A-Za-z0-9_]+/);
    const to = Math.min(doc.length, from + Math.max(1, word ? word[0].length : 1));
    const where = f.line ? ` (line ${f.line}${f.column ? `, column ${f.column}` : ""})` : "";
    return { from, to: Math.max(from, to), severity, message: `${f.message}${where}` };
  });
}

/// The last check's diagnostics, and the document they were found in.
let lastCheck = [];
let lastCheckDoc = null;

/// The module's `check`, as the script changes (debounced by the linter).
async function checkScript(view) {
  const script = view.state.doc.toString();
  let config;
  try {
    config = pluginConfig();
  } catch {
    config = {};
  }
  let answer;
  try {
    answer = await bridge.call({ op: "check", script, config });
  } catch (e) {
    $("check-status").textContent = e instanceof BackstopError ? "check stopped" : `check failed: ${e.message}`;
    $("check-status").className = "bad";
    return [];
  }
  // The script changed meanwhile: the linter checks it again.
  if (view.state.doc.toString() !== script) return [];
  if (answer.error) {
    $("check-status").textContent = answer.error;
    $("check-status").className = "bad";
    return [];
  }
  const errors = answer.errors ?? [];
  const warnings = answer.warnings ?? [];
  lastCheck = [...diagnostics(view.state.doc, errors, "error"), ...diagnostics(view.state.doc, warnings, "warning")];
  lastCheckDoc = view.state.doc;
  const first = errors[0];
  $("check-status").textContent = errors.length
    ? `${errors.length} error${errors.length > 1 ? "s" : ""}${first.line ? `: line ${first.line}, column ${first.column}` : ""}`
    : warnings.length
      ? `compiles; ${warnings.length} warning${warnings.length > 1 ? "s" : ""}`
      : "compiles";
  $("check-status").className = errors.length ? "bad" : warnings.length ? "warn" : "good";
  return lastCheck;
}

let completions = null;

/// The API's functions (the tokenizer's built-ins) and the functions a script defines.
const apiHighlight = HighlightStyle.define([
  { tag: tags.standard(tags.variableName), color: "#0b57a4", fontWeight: "600" },
  { tag: tags.definition(tags.variableName), color: "#00695c", fontWeight: "600" },
]);

const scriptEditor = new EditorView({
  parent: $("script-editor"),
  state: EditorState.create({
    doc: "",
    extensions: [
      lineNumbers(),
      EditorView.lineWrapping,
      highlightActiveLineGutter(),
      history(),
      drawSelection(),
      indentOnInput(),
      bracketMatching(),
      closeBrackets(),
      highlightActiveLine(),
      highlightSelectionMatches(),
      rhai,
      syntaxHighlighting(apiHighlight),
      syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
      autocompletion({ override: [(context) => completions?.(context) ?? null] }),
      linter(checkScript, { delay: 300 }),
      lintGutter(),
      errorLines,
      hoverTooltip(apiTooltip),
      keymap.of([
        { key: "Mod-Enter", run: () => (run(), true) },
        ...closeBracketsKeymap,
        ...defaultKeymap,
        ...searchKeymap,
        ...historyKeymap,
        ...completionKeymap,
        indentWithTab,
      ]),
      EditorView.updateListener.of((u) => {
        if (u.selectionSet || u.docChanged) showDocAtCursor(u.state);
      }),
    ],
  }),
});

const configEditor = new EditorView({
  parent: $("config-editor"),
  state: EditorState.create({
    doc: "{}",
    extensions: [
      lineNumbers(),
      history(),
      drawSelection(),
      bracketMatching(),
      closeBrackets(),
      json(),
      syntaxHighlighting(defaultHighlightStyle, { fallback: true }),
      linter(jsonParseLinter(), { delay: 300 }),
      lintGutter(),
      keymap.of([{ key: "Mod-Enter", run: () => (run(), true) }, ...closeBracketsKeymap, ...defaultKeymap, ...historyKeymap]),
    ],
  }),
});

function setDoc(view, text) {
  view.dispatch({ changes: { from: 0, to: view.state.doc.length, insert: text } });
}

function pluginConfig() {
  const text = configEditor.state.doc.toString().trim() || "{}";
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`the plugin configuration is not JSON: ${e.message}`);
  }
  if (typeof value !== "object" || Array.isArray(value) || value === null) {
    throw new Error("the plugin configuration must be a JSON object");
  }
  return value;
}

// ---- API help -----------------------------------------------------------------------------

let api = null;
const apiByName = new Map();

async function loadApi() {
  try {
    api = await bridge.call({ op: "api" });
  } catch (e) {
    $("api-doc").innerHTML = `<p class="bad">${escape(e.message)}</p>`;
    return;
  }
  for (const f of [...api.functions, ...api.phases]) {
    if (!apiByName.has(f.name)) apiByName.set(f.name, []);
    apiByName.get(f.name).push(f);
    apiNames.add(f.name);
  }
  completions = apiCompletions(api);
}

let docShown = null;

/// A function's signatures and doc when the pointer rests on its name.
function apiTooltip(view, pos) {
  const word = view.state.wordAt(pos);
  const entries = word && apiByName.get(view.state.sliceDoc(word.from, word.to));
  if (!entries) return null;
  return {
    pos: word.from,
    end: word.to,
    above: true,
    create() {
      const dom = document.createElement("div");
      dom.className = "api-info";
      // The first paragraph: the whole doc is in the panel.
      const first = docBody(entries[0]).split(/\n\s*\n/)[0];
      dom.innerHTML = entries.map((e) => `<pre class="sig">${escape(e.signature)}</pre>`).join("") + markdown(first);
      return { dom };
    },
  };
}

function showDocAtCursor(state) {
  const word = state.wordAt(state.selection.main.head);
  const name = word && state.sliceDoc(word.from, word.to);
  const entries = name && apiByName.get(name);
  if (!entries || name === docShown) return;
  docShown = name;
  const phases = entries[0].phases?.length ? `<p class="phases">Works in: ${entries[0].phases.map(escape).join(", ")}</p>` : "";
  $("api-doc").innerHTML =
    `<h3>${escape(name)}</h3>` +
    entries.map((e) => `<pre class="sig">${escape(e.signature)}</pre>`).join("") +
    phases +
    markdown(docBody(entries[0]));
}

// ---- the request, the upstream answer, the callouts -------------------------------------------

const requestFields = ["method", "path", "headers", "body"];
let requestMode = "form";

function readRequestForm() {
  const form = {};
  for (const f of requestFields) form[f] = $(`req-${f}`).value;
  form.extra = $("req-extra").value;
  return form;
}

function writeRequestForm(form) {
  for (const f of requestFields) $(`req-${f}`).value = form[f] ?? "";
  $("req-extra").value = form.extra ?? "";
  $("request-message").value = requestToMessage(form);
}

function setRequestMode(mode) {
  if (mode === requestMode) return;
  if (mode === "message") $("request-message").value = requestToMessage(readRequestForm());
  else writeRequestForm({ ...requestFromMessage($("request-message").value), extra: $("req-extra").value });
  showRequestMode(mode);
}

function showRequestMode(mode) {
  requestMode = mode;
  $("request-form").hidden = mode !== "form";
  $("request-message-box").hidden = mode !== "message";
  document.querySelector(`input[name=request-mode][value=${mode}]`).checked = true;
}

function currentRequestForm() {
  if (requestMode === "message") return { ...requestFromMessage($("request-message").value), extra: $("req-extra").value };
  return readRequestForm();
}

function readResponseForm() {
  return {
    on: $("resp-on").checked,
    status: $("resp-status").value,
    headers: $("resp-headers").value,
    body: $("resp-body").value,
    extra: $("resp-extra").value,
  };
}

function writeResponseForm(form) {
  $("resp-on").checked = form.on;
  $("resp-status").value = form.status;
  $("resp-headers").value = form.headers;
  $("resp-body").value = form.body;
  $("resp-extra").value = form.extra;
  $("resp-fields").disabled = !form.on;
}

// ---- the whole state: examples, links ----------------------------------------------------------

/// The example the state came from: its script's file name for "copy as test".
let exampleName = "";

function state() {
  return {
    name: exampleName,
    script: scriptEditor.state.doc.toString(),
    plugin_config: configEditor.state.doc.toString(),
    request: currentRequestForm(),
    response: readResponseForm(),
    callouts: $("callouts").value,
  };
}

function setState(s) {
  exampleName = s.name ?? "";
  setDoc(scriptEditor, s.script ?? "");
  setDoc(configEditor, s.plugin_config ?? "{}");
  showRequestMode("form");
  writeRequestForm(s.request ?? requestForm("GET / HTTP/1.1\nHost: example.com\n\n"));
  writeResponseForm(s.response ?? responseForm(null));
  $("callouts").value = s.callouts ?? "";
  clearOutcome();
}

/// What the module's run, as_test and as_deploy take, from the page's state.
function runInputs() {
  const s = state();
  const inputs = {
    script: s.script,
    plugin_config: pluginConfig(),
    request: requestJson(s.request),
    callouts: calloutLines(s.callouts),
  };
  if (s.response.on) inputs.response = responseJson(s.response);
  return inputs;
}

let examples = [];

function exampleState(e) {
  return {
    name: e.name,
    script: e.script,
    plugin_config: JSON.stringify(e.plugin_config ?? {}, null, 2),
    request: requestForm(e.request ?? "GET / HTTP/1.1\nHost: example.com\n\n"),
    response: responseForm(e.response),
    callouts: (e.callouts ?? []).join("\n"),
  };
}

/// Scrolls past a script's opening comment, to its first line of code.
function showCode() {
  const doc = scriptEditor.state.doc;
  for (let n = 1; n <= doc.lines; n++) {
    const line = doc.line(n);
    if (line.text.trim() && !line.text.trimStart().startsWith("//")) {
      scriptEditor.dispatch({ selection: { anchor: line.from } });
      // The editor's own scroller only (scrollIntoView would scroll the page's columns too).
      scriptEditor.requestMeasure({
        read: (view) => view.lineBlockAt(line.from).top,
        write: (top, view) => (view.scrollDOM.scrollTop = Math.max(0, top - 20)),
      });
      return;
    }
  }
}

function selectExample(name) {
  for (const b of document.querySelectorAll("#examples button")) b.classList.toggle("current", b.dataset.name === name);
}

async function loadExamples() {
  const response = await fetch("examples.json");
  examples = (await response.json()).examples;
  for (const e of examples) {
    const b = document.createElement("button");
    b.textContent = e.name;
    b.title = e.title;
    b.dataset.name = e.name;
    b.onclick = () => {
      setState(exampleState(e));
      showCode();
      selectExample(e.name);
      window.history.replaceState(null, "", location.pathname);
      run();
    };
    $("examples").append(b);
  }
}

// ---- running ----------------------------------------------------------------------------------

function clearOutcome() {
  $("summary").innerHTML = "Press <b>Run</b> (Ctrl-Enter) to send the request through the script.";
  $("summary").className = "panel";
  $("outcome").innerHTML = "";
  scriptEditor.dispatch({ effects: setErrorLines.of(Decoration.none) });
}

let running = false;
/// A run asked for while one was going: it starts when that one ends.
let runAgain = false;

/// Counts the runs that ended, whichever way (the browser test waits on it).
const ranOnce = () => (document.body.dataset.runs = String(Number(document.body.dataset.runs ?? 0) + 1));

async function run() {
  if (running) {
    runAgain = true;
    return;
  }
  let inputs;
  try {
    inputs = runInputs();
  } catch (e) {
    showFailure(e.message);
    ranOnce();
    return;
  }
  running = true;
  $("run").disabled = true;
  setStatus("running…");
  const started = performance.now();
  try {
    const answer = await bridge.call({ op: "run", ...inputs });
    const ms = performance.now() - started;
    window.playgroundLastRun = { answer, ms };
    if (answer.error) showFailure(answer.error, answer);
    else showOutcome(answer, ms);
    setStatus(`ran in ${ms.toFixed(1)} ms`);
  } catch (e) {
    showFailure(e.message);
    setStatus(e instanceof BackstopError ? e.message : "the run failed", "bad");
  } finally {
    running = false;
    $("run").disabled = false;
    ranOnce();
    if (runAgain) {
      runAgain = false;
      run();
    }
  }
}

function markErrors(positions) {
  const doc = scriptEditor.state.doc;
  const lines = [...new Set(positions.filter((p) => p.line).map((p) => Math.min(p.line, doc.lines)))].sort((a, b) => a - b);
  const decorations = Decoration.set(lines.map((l) => Decoration.line({ class: "cm-run-error-line" }).range(doc.line(l).from)));
  scriptEditor.dispatch({ effects: setErrorLines.of(decorations) });
  const checked = lastCheckDoc === doc ? lastCheck : [];
  scriptEditor.dispatch(setDiagnostics(scriptEditor.state, [...checked, ...diagnostics(doc, positions, "error")]));
}

function showFailure(message, answer = {}) {
  $("summary").className = "panel failure";
  const where = answer.line ? ` <a href="#" class="goto" data-line="${answer.line}">line ${answer.line}${answer.column ? `, column ${answer.column}` : ""}</a>` : "";
  $("summary").innerHTML = `<b>Not run:</b> ${escape(message)}${where}`;
  $("outcome").innerHTML = "";
  if (answer.line) markErrors([{ message, line: answer.line, column: answer.column }]);
}

const headersTable = (pairs) =>
  pairs?.length
    ? `<table class="headers">${pairs.map(([n, v]) => `<tr><th>${escape(n)}</th><td>${escape(v)}</td></tr>`).join("")}</table>`
    : `<p class="none">no headers</p>`;

function bodyBlock(body, chunks) {
  if (!body) return `<p class="none">no body</p>`;
  const pieces = chunks?.length > 1 ? ` <small>in ${chunks.length} pieces</small>` : "";
  return `<p class="label">body (${new TextEncoder().encode(body).length} bytes)${pieces}</p><pre class="body">${escape(body)}</pre>`;
}

const section = (id, title, content, open = true) =>
  `<details id="${id}" ${open ? "open" : ""}><summary>${title}</summary>${content}</details>`;

/// What a host call acts on, from the map or buffer it names.
function touches(call) {
  const m = call.match(/\((Http\w+)/);
  if (!m) return "";
  return m[1]
    .replace(/^HttpCallResponse/, "callout answer ")
    .replace(/^HttpRequest/, "request ")
    .replace(/^HttpResponse/, "response ")
    .toLowerCase()
    .trim();
}

/// The trace under the proxy's calls into the plugin (`events`: each callback and the index
/// of its first host call), each host call tagged with what it touches. A callback's heading
/// shows only above the calls it made; a body piece's note always shows (it says its size).
function traceBlock(trace, events) {
  const starts = new Map();
  for (const { event, at } of events ?? []) {
    if (!/_body$/.test(event)) starts.set(at, [...(starts.get(at) ?? []), event]);
  }
  const rows = [];
  let n = 0;
  let heading = "";
  trace.forEach((line, i) => {
    for (const event of starts.get(i) ?? []) heading = `<li class="phase">${escape(event)}</li>`;
    if (line.startsWith("-- ")) {
      const data = line.match(/^-- (request|response) data: (.*)$/);
      if (data) {
        heading = "";
        rows.push(`<li class="phase">on_http_${data[1]}_body: ${escape(data[2])}</li>`);
      } else {
        rows.push(heading, `<li class="note">${escape(line.slice(3))}</li>`);
        heading = "";
      }
      return;
    }
    rows.push(heading);
    heading = "";
    n++;
    const what = touches(line);
    const tag = what ? `<span class="tag">${escape(what)}</span>` : "";
    const kind = /^log_error|^send_http_response\(5/.test(line) ? " bad" : /^log_/.test(line) ? " log" : "";
    rows.push(`<li class="call${kind}"><span class="n">${n}</span><code>${escape(line)}</code>${tag}</li>`);
  });
  return `<ol class="trace">${rows.join("")}</ol>`;
}

function keyValues(object, empty) {
  const entries = Object.entries(object ?? {});
  if (!entries.length) return `<p class="none">${empty}</p>`;
  return `<table class="kv">${entries
    .map(([k, v]) => `<tr><th>${escape(k)}</th><td><code>${escape(typeof v === "string" ? v : JSON.stringify(v))}</code></td></tr>`)
    .join("")}</table>`;
}

function logBlock(lines, empty) {
  if (!lines?.length) return `<p class="none">${empty}</p>`;
  return `<ul class="log">${lines.map((l) => `<li class="${escape(l.level)}"><span class="level">${escape(l.level)}</span> ${escape(l.message)}</li>`).join("")}</ul>`;
}

function showOutcome(a, ms) {
  const r = a.response ?? {};
  const from = r.local ? "a local response" : r.reset ? "the stream was reset" : "from the upstream";
  const failed = a.errors?.length;
  $("summary").className = `panel ${failed ? "failure" : "success"}`;
  $("summary").innerHTML =
    `<span id="client-status" class="status s${String(r.status)[0]}">${escape(r.status ?? "—")}</span> ` +
    `<span>${escape(from)}</span>` +
    (a.stalled ? ` <span class="bad">stalled: ${escape(a.stalled)}</span>` : "") +
    `<span class="time" id="run-time">${ms.toFixed(1)} ms</span>`;
  const positions = a.error_positions ?? [];
  const errors = failed
    ? `<div id="errors" class="panel failure"><h3>Script errors</h3><ul>${a.errors
        .map((e, i) => {
          const p = positions[i];
          const at = p?.line ? ` <a href="#" class="goto" data-line="${p.line}">line ${p.line}${p.column ? `, column ${p.column}` : ""}</a>` : "";
          return `<li>${escape(e)}${at}</li>`;
        })
        .join("")}</ul></div>`
    : "";
  markErrors(positions);
  const up = a.upstream;
  const upstream = up
    ? `<p class="line"><code>${escape(up.method)} ${escape(up.path)}</code></p>${headersTable(up.headers)}${bodyBlock(up.body, up.chunks)}`
    : `<p class="none">nothing: the request never reached the upstream</p>`;
  const client = `${headersTable(r.headers)}${bodyBlock(r.body, r.chunks)}`;
  const callouts = a.callouts?.length
    ? a.callouts
        .map((c) => `<div class="callout"><p class="line"><code>${escape(c.method)} ${escape(c.cluster)}${escape(c.path)}</code> <small>timeout ${escape(c.timeout_ms)} ms</small></p>${headersTable(c.headers)}${bodyBlock(c.body)}</div>`)
        .join("")
    : "";
  const context = a.context !== undefined ? section("out-context", "Context (set_context)", keyValues(a.context, "nothing kept"), false) : "";
  $("outcome").innerHTML =
    errors +
    section("out-trace", `Host calls, as the stream goes (${(a.trace ?? []).filter((l) => !l.startsWith("-- ")).length})`, traceBlock(a.trace ?? [], a.events)) +
    (callouts ? section("out-callouts", `Callouts made (${a.callouts.length})`, callouts) : "") +
    section("out-upstream", "What the upstream received", upstream) +
    section("out-client", `What the client received: ${escape(r.status)}`, client) +
    section("out-log", "Logs", logBlock(a.log, "nothing logged")) +
    (a.configure_log?.length ? section("out-configure-log", "Logs at configure time", logBlock(a.configure_log, "")) : "") +
    section("out-metrics", "Metrics", keyValues(a.metrics, "no metrics")) +
    section("out-shared", "Shared data", keyValues(a.shared_data, "no shared data")) +
    section("out-filter-state", "Filter state", keyValues(a.filter_state, "no filter state")) +
    context +
    (a.text ? section("out-text", "As <code>proxy-rhai run</code> prints it", `<pre class="text">${escape(a.text)}</pre>`, false) : "");
}

document.addEventListener("click", (e) => {
  const link = e.target.closest("a.goto");
  if (!link) return;
  e.preventDefault();
  const doc = scriptEditor.state.doc;
  const line = doc.line(Math.min(Number(link.dataset.line), doc.lines));
  scriptEditor.dispatch({ selection: { anchor: line.from }, scrollIntoView: true });
  scriptEditor.focus();
});

// ---- share, copy as test, copy as deploy ----------------------------------------------------

function showOutput(title, text, note) {
  $("output-title").textContent = title;
  $("output-text").value = text;
  $("output-note").textContent = note;
  if (!$("output").open) $("output").showModal();
}

async function copy(text) {
  try {
    await navigator.clipboard.writeText(text);
    return "Copied to the clipboard.";
  } catch {
    return "Select the text and copy it.";
  }
}

async function share() {
  const link = `${location.origin}${location.pathname}#s=${await encodeState(state())}`;
  window.history.replaceState(null, "", link);
  showOutput("Link to this playground", link, `${await copy(link)} It holds the script, configuration, request and answers (${link.length} characters).`);
}

async function copyAs(op, title) {
  let inputs;
  try {
    inputs = runInputs();
  } catch (e) {
    setStatus(e.message, "bad");
    return;
  }
  if (op === "as_deploy") inputs = { script: inputs.script, plugin_config: inputs.plugin_config };
  // The test loads the script beside it: scripts/NAME.rhai for an example.
  else inputs.script_path = `${exampleName || "script"}.rhai`;
  try {
    const answer = await bridge.call({ op, ...inputs });
    if (answer.error) {
      setStatus(answer.error, "bad");
      return;
    }
    showOutput(title, answer.text, await copy(answer.text));
  } catch (e) {
    setStatus(e.message, "bad");
  }
}

// ---- wiring -----------------------------------------------------------------------------------

for (const tab of document.querySelectorAll("[role=tab]")) {
  tab.onclick = () => {
    for (const t of document.querySelectorAll("[role=tab]")) {
      t.setAttribute("aria-selected", String(t === tab));
      $(`tab-${t.dataset.tab}`).hidden = t !== tab;
    }
  };
}
for (const radio of document.querySelectorAll("input[name=request-mode]")) {
  radio.onchange = () => {
    try {
      setRequestMode(radio.value);
    } catch (e) {
      setStatus(e.message, "bad");
      document.querySelector(`input[name=request-mode][value=${requestMode}]`).checked = true;
    }
  };
}
$("resp-on").onchange = () => ($("resp-fields").disabled = !$("resp-on").checked);
$("run").onclick = run;
$("share").onclick = share;
$("copy-test").onclick = () => copyAs("as_test", "A test case for this run (paste it into a *.test.rhai file)");
$("copy-deploy").onclick = () => copyAs("as_deploy", "proxy-rhai deploy envoy");
document.addEventListener("keydown", (e) => {
  if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !e.defaultPrevented) {
    e.preventDefault();
    run();
  }
});
configEditor.dom.addEventListener("focusout", () => forceLinting(scriptEditor));

/// The state a shared link holds; false when the page's address holds none.
async function loadLink() {
  const shared = location.hash.match(/^#s=(.+)$/);
  if (!shared) return false;
  try {
    setState(await decodeState(shared[1]));
    selectExample("");
    setStatus("loaded from the link");
  } catch (e) {
    setStatus(`the link's state could not be read: ${e.message}`, "bad");
    return false;
  }
  return true;
}

async function start() {
  // The API first: the tokenizer highlights its names once they are known.
  await Promise.all([loadExamples(), loadApi()]);
  if (!(await loadLink())) {
    setState(exampleState(examples[0]));
    showCode();
    selectExample(examples[0].name);
  }
  // A link pasted into this tab changes only the fragment.
  window.addEventListener("hashchange", loadLink);
  document.body.dataset.ready = "true";
  // Milliseconds from navigation to a page ready to run (the browser test prints it).
  window.playgroundReadyAt = performance.now();
}

start();
