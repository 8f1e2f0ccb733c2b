// The request and the upstream answer as the page edits them (a form: method, path, headers as
// `Name: value` lines, body, and the JSON fields a form has no place for), their HTTP/1.1
// message text, and the JSON `proxy-rhai run --request` / `--response` take.

/// `Name: value` lines as pairs (names lowercased, as the CLI reads a message's headers).
export function headerPairs(text) {
  const pairs = [];
  for (const line of text.split("\n")) {
    if (!line.trim()) continue;
    const colon = line.indexOf(":", line.startsWith(":") ? 1 : 0);
    if (colon < 0) throw new Error(`\`${line}\` is not a \`Name: value\` header line`);
    pairs.push([line.slice(0, colon).trim().toLowerCase(), line.slice(colon + 1).trim()]);
  }
  return pairs;
}

const headerLines = (pairs) => pairs.map(([n, v]) => `${n}: ${v}`).join("\n");

/// Header lines up to the empty line, then the body (as the CLI's request files).
function splitMessage(text) {
  const crlf = text.indexOf("\r\n\r\n");
  const lf = text.indexOf("\n\n");
  let head = text;
  let body = "";
  if (crlf >= 0 && (lf < 0 || crlf < lf)) [head, body] = [text.slice(0, crlf), text.slice(crlf + 4)];
  else if (lf >= 0) [head, body] = [text.slice(0, lf), text.slice(lf + 2)];
  const lines = head.replace(/\r/g, "").replace(/\n+$/, "").split("\n");
  return { first: lines[0] ?? "", headers: lines.slice(1).join("\n"), body };
}

/// An HTTP/1.1 request message as the form's fields.
export function requestFromMessage(text) {
  const { first, headers, body } = splitMessage(text);
  const [method, path] = first.trim().split(/\s+/);
  if (!method || !path) throw new Error(`\`${first}\` is not a request line (METHOD PATH HTTP/1.1)`);
  headerPairs(headers);
  return { method, path, headers, body };
}

export function requestToMessage(r) {
  const head = `${r.method} ${r.path} HTTP/1.1`;
  return `${head}\n${r.headers ? `${r.headers.replace(/\n+$/, "")}\n` : ""}\n${r.body}`;
}

/// A request as the manifest gives it (HTTP text, or run's JSON) as the form's fields.
export function requestForm(value) {
  if (typeof value === "string") return { ...requestFromMessage(value), extra: "" };
  const { method = "GET", path = "/", authority, headers = [], body = "", ...rest } = value;
  let pairs = Array.isArray(headers) ? headers : Object.entries(headers);
  if (authority) pairs = [["host", authority], ...pairs];
  const extra = Object.keys(rest).length ? JSON.stringify(rest, null, 2) : "";
  return { method, path, headers: headerLines(pairs), body, extra };
}

/// The form as the JSON request `run` takes: `host` is the authority, as in a message.
export function requestJson(form) {
  const request = { method: form.method || "GET", path: form.path || "/" };
  const pairs = headerPairs(form.headers);
  const host = pairs.find(([n]) => n === "host");
  if (host) request.authority = host[1];
  request.headers = pairs.filter(([n]) => n !== "host");
  const extra = parseExtra("request", form.extra);
  if (!("chunks" in extra)) request.body = form.body;
  return { ...request, ...extra };
}

/// An upstream answer as the manifest gives it (HTTP text, or JSON) as the form's fields.
export function responseForm(value) {
  if (!value) return { on: false, status: "200", headers: "content-type: text/plain", body: "upstream response\n", extra: "" };
  if (typeof value === "string") {
    const { first, headers, body } = splitMessage(value);
    const status = first.trim().split(/\s+/)[1] ?? "200";
    return { on: true, status, headers, body, extra: "" };
  }
  const { status = 200, headers = [], body = "", ...rest } = value;
  const pairs = Array.isArray(headers) ? headers : Object.entries(headers);
  const extra = Object.keys(rest).length ? JSON.stringify(rest, null, 2) : "";
  return { on: true, status: String(status), headers: headerLines(pairs), body, extra };
}

export function responseJson(form) {
  const status = Number(form.status);
  if (!Number.isInteger(status)) throw new Error(`upstream status \`${form.status}\` is not a number`);
  const response = { status, headers: headerPairs(form.headers) };
  const extra = parseExtra("upstream answer", form.extra);
  if (!("chunks" in extra)) response.body = form.body;
  return { ...response, ...extra };
}

function parseExtra(what, text) {
  if (!text.trim()) return {};
  let value;
  try {
    value = JSON.parse(text);
  } catch (e) {
    throw new Error(`${what}: the extra fields are not JSON: ${e.message}`);
  }
  if (typeof value !== "object" || Array.isArray(value) || value === null) {
    throw new Error(`${what}: the extra fields must be a JSON object`);
  }
  return value;
}

/// `cluster[/path]=ANSWER` lines, as `--callout` takes them.
export const calloutLines = (text) => text.split("\n").map((l) => l.trim()).filter(Boolean);
