// Shared pieces: building DOM (text only, never HTML strings), calling the API, formatting.

export const CSRF_HEADER = "X-Culm-CSRF";

/** h("tag.class", {attr: value, onclick: fn}, ...children): an element. */
export function h(spec, attrs = {}, ...children) {
  const [tag, ...classes] = spec.split(".");
  const el = document.createElement(tag || "div");
  if (classes.length) el.className = classes.join(" ");
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
    else if (key === "text") el.textContent = value;
    else if (key === "value") el.value = value;
    else el.setAttribute(key, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : String(child));
  }
  return el;
}

export class ApiError extends Error {
  constructor(status, code, message, body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

let onUnauthorized = () => {};
export function whenUnauthorized(handler) { onUnauthorized = handler; }

/** Call the API: JSON in and out; errors become ApiError with the API's code and message. */
export async function api(path, { method = "GET", body, signal } = {}) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers[CSRF_HEADER] = "1";
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = (method === "GET" && !signal && await early(path)) || await fetch(path, {
    method, headers, signal, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 204) return null;
  const data = await response.json().catch(() => null);
  if (!response.ok) {
    const error = (data && data.error) || {};
    if (response.status === 401) onUnauthorized();
    throw new ApiError(response.status, error.code || "http_" + response.status,
      error.message || response.statusText, data);
  }
  return data;
}

const EARLY_MS = 5000;

/** The page's own early request for ``path`` (index.html starts it): its response, once, if it
 * answered 2xx and is recent; else null (the caller asks again: a 401 from before sign-in, say). */
async function early(path) {
  const found = window.culmEarly && window.culmEarly[path];
  if (!found) return null;
  delete window.culmEarly[path];
  if (performance.now() - found.at > EARLY_MS) return null;
  const response = await found.response.catch(() => null);
  return response && response.ok ? response : null;
}

export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) if (v !== "" && v !== null && v !== undefined) q.set(k, v);
  const s = q.toString();
  return s ? "?" + s : "";
}

export function toast(message, bad = false) {
  const box = document.getElementById("toast");
  const msg = h("div.msg" + (bad ? ".bad" : ""), { text: message });
  box.append(msg);
  setTimeout(() => msg.remove(), bad ? 8000 : 4000);
}

export const dash = "\u2014";
// One formatter each, made once: toLocaleString() builds a new one per call (the runs page's
// 50 rows made 150 of them, most of the time between the list's answer and its rows).
const NUMBER = new Intl.NumberFormat("en");
const DATE_TIME = new Intl.DateTimeFormat(undefined, { dateStyle: "short", timeStyle: "medium" });
export function num(n) { return n === null || n === undefined ? dash : NUMBER.format(Number(n)); }
export function cost(run) {
  // cost_usd may be absent (older servers) or null (unpriced): both show a dash, never 0.
  const c = run && run.cost_usd;
  return c === null || c === undefined ? dash : "$" + Number(c).toFixed(c < 1 ? 4 : 2);
}
export function when(iso) {
  if (!iso) return dash;
  const d = new Date(iso);
  return DATE_TIME.format(d);
}
export function duration(run) {
  if (!run.started_at) return dash;
  const end = run.completed_at ? new Date(run.completed_at) : new Date();
  const ms = end - new Date(run.started_at);
  if (ms < 1000) return ms + " ms";
  if (ms < 60000) return (ms / 1000).toFixed(1) + " s";
  return Math.floor(ms / 60000) + " min " + Math.round((ms % 60000) / 1000) + " s";
}
export function short(id) { return id ? id.slice(0, 8) : dash; }
export function statusBadge(status) {
  return h("span.status.status-" + status, { text: status });
}
export const TERMINAL = new Set(["completed", "cancelled", "error"]);

/** A labelled control: <label>text <control></label>. */
export function field(text, control) { return h("label", {}, text, control); }

export function select(name, options, value, onchange) {
  const el = h("select", { name, onchange });
  for (const option of options) {
    const [v, t] = Array.isArray(option) ? option : [option, option || "any"];
    el.append(h("option", { value: v, text: t }));
  }
  el.value = value || "";
  return el;
}
