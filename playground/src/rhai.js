// Rhai for CodeMirror: a stream tokenizer for highlighting, completions from the API the
// module describes (its `api` op), and a small markdown renderer for the API's docs.
import { StreamLanguage } from "@codemirror/language";

const KEYWORDS = new Set(
  ("fn let const if else switch while loop for in do until break continue return throw try " +
    "catch import export as private global this is_shared Fn call curry type_of print debug " +
    "is_def_var is_def_fn").split(" "),
);
const ATOMS = new Set(["true", "false"]);

/// The API's function names, filled in once the module answered `api`: they highlight as
/// built-ins.
export const apiNames = new Set();

function inComment(stream, state) {
  while (!stream.eol()) {
    if (stream.match("/*")) state.comment++;
    else if (stream.match("*/")) {
      if (--state.comment === 0) break;
    } else stream.next();
  }
  return "comment";
}

function inTemplate(stream, state) {
  while (!stream.eol()) {
    const ch = stream.next();
    if (ch === "\\") stream.next();
    else if (ch === "`") {
      state.template = false;
      break;
    }
  }
  return "string";
}

export const rhai = StreamLanguage.define({
  name: "rhai",
  startState: () => ({ comment: 0, template: false, afterFn: false }),
  token(stream, state) {
    if (state.comment > 0) return inComment(stream, state);
    if (state.template) return inTemplate(stream, state);
    if (stream.eatSpace()) return null;
    if (stream.match("//")) {
      stream.skipToEnd();
      return "comment";
    }
    if (stream.match("/*")) {
      state.comment = 1;
      return inComment(stream, state);
    }
    const ch = stream.peek();
    if (ch === '"') {
      stream.next();
      while (!stream.eol()) {
        const c = stream.next();
        if (c === "\\") stream.next();
        else if (c === '"') break;
      }
      return "string";
    }
    if (ch === "`") {
      stream.next();
      state.template = true;
      return inTemplate(stream, state);
    }
    if (stream.match(/^'(\\.|[^'\\])'/)) return "string";
    if (stream.match(/^0x[0-9a-fA-F_]+/) || stream.match(/^\d[\d_]*(\.\d[\d_]*)?([eE][+-]?\d+)?/)) {
      return "number";
    }
    if (stream.match("#{")) return "bracket";
    const word = stream.match(/^[A-Za-z_][A-Za-z0-9_]*/);
    if (word) {
      const name = word[0];
      if (state.afterFn) {
        state.afterFn = false;
        return "def";
      }
      if (KEYWORDS.has(name)) {
        state.afterFn = name === "fn";
        return "keyword";
      }
      if (ATOMS.has(name)) return "atom";
      if (apiNames.has(name)) return "builtin";
      const before = stream.string.slice(0, stream.start).trimEnd();
      if (before.endsWith(".") || before.endsWith("?.")) return "propertyName";
      return /^[A-Z][A-Z0-9_]*$/.test(name) ? "atom" : "variableName";
    }
    if (stream.match(/^[+\-*/%=<>!&|^?:.~]+/)) return "operator";
    stream.next();
    return null;
  },
  languageData: { commentTokens: { line: "//", block: { open: "/*", close: "*/" } } },
});

/// Markdown as the API docs use it (paragraphs, lists, fenced and inline code, emphasis,
/// links) as HTML.
export function markdown(text) {
  const escape = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const inline = (s) =>
    escape(s)
      .replace(/``\s?(.+?)\s?``|`([^`]+)`/g, (_, double, single) => `<code>${double ?? single}</code>`)
      .replace(/\*\*([^*]+)\*\*/g, "<strong>$1</strong>")
      .replace(/\[([^\]]+)\]\([^)]+\)/g, "$1");
  const out = [];
  let fence = false;
  for (const part of text.split(/^```.*$/m)) {
    if (fence) out.push(`<pre><code>${escape(part.replace(/^\n|\n$/g, ""))}</code></pre>`);
    else {
      for (const para of part.split(/\n\s*\n/)) {
        const lines = para.trim().split("\n");
        if (!lines[0]) continue;
        const heading = lines[0].match(/^#{1,6}\s+(.*)$/);
        if (heading && lines.length === 1) {
          out.push(`<h4>${inline(heading[1])}</h4>`);
          continue;
        }
        if (lines.every((l) => /^\s*[-*] /.test(l) || /^\s{2,}/.test(l))) {
          const items = para.trim().split(/\n\s*[-*] /).map((i) => i.replace(/^[-*] /, ""));
          out.push(`<ul>${items.map((i) => `<li>${inline(i)}</li>`).join("")}</ul>`);
        } else out.push(`<p>${inline(lines.join(" "))}</p>`);
      }
    }
    fence = !fence;
  }
  return out.join("");
}

/// A function's doc as api-docs/ has it, without the heading and the signature block shown
/// above it already.
export const docBody = (entry) => (entry.doc ?? "").replace(/^###[^\n]*\n+(```rhai\n[\s\S]*?\n```\n*)?/, "");

/// Completions of the API's functions and phase functions, each with its signature and doc.
export function apiCompletions(api) {
  const byName = new Map();
  for (const f of api.functions) {
    if (!byName.has(f.name)) byName.set(f.name, []);
    byName.get(f.name).push(f);
  }
  const info = (entries) => () => {
    const div = document.createElement("div");
    div.className = "api-info";
    div.innerHTML = entries
      .map((e) => `<pre class="sig">${e.signature.replace(/</g, "&lt;")}</pre>${markdown(docBody(e))}`)
      .join("");
    return div;
  };
  const functions = [...byName.entries()].map(([name, entries]) => ({
    label: name,
    type: "function",
    detail: entries.length > 1 ? `${entries.length} forms` : entries[0].signature.replace(/^(fn )?\w+/, ""),
    info: info(entries),
  }));
  const phases = api.phases.map((p) => ({
    label: p.name,
    type: "method",
    detail: "phase",
    info: info([p]),
  }));
  const keywords = [...KEYWORDS].map((k) => ({ label: k, type: "keyword" }));
  return (context) => {
    const word = context.matchBefore(/[A-Za-z_][A-Za-z0-9_]*/);
    if (!word && !context.explicit) return null;
    const afterFn = /\bfn\s+$/.test(context.state.sliceDoc(Math.max(0, (word?.from ?? context.pos) - 10), word?.from ?? context.pos));
    return {
      from: word ? word.from : context.pos,
      options: afterFn ? phases : [...functions, ...keywords],
      validFor: /^[A-Za-z0-9_]*$/,
    };
  };
}
