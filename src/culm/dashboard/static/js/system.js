// MCP servers (status, tools, last error, refresh) and workers (distributed deployment).
import { api, dash, h, num, toast, when } from "./lib.js";

export function renderMcp(main) {
  const list = h("div");
  main.append(h("h1", { text: "MCP servers" }), list);
  async function load() {
    try {
      const { servers } = await api("/v1/mcp/servers");
      list.replaceChildren(...(servers.length ? servers.map((s) => h("section.panel", { "aria-label": "MCP server " + s.name },
        h("div.row", {}, h("h2", { text: s.name }), h("span.status.status-" + (s.status === "ready" ? "completed" : s.status === "error" ? "error" : "running"), { text: s.status }),
          h("button", { type: "button", text: "Refresh", "aria-label": "Refresh " + s.name, onclick: async () => {
            try { await api(`/v1/mcp/servers/${encodeURIComponent(s.name)}/refresh`, { method: "POST" }); toast("Refreshed " + s.name); load(); }
            catch (error) { toast(`Refresh of ${s.name} failed: ${error.message}`, true); }
          } })),
        h("dl.facts", {},
          ...[["Transport", s.transport], ["Tools", num(s.tool_count)], ["Restarts", num(s.restarts)]].map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: v }))),
          h("div", {}, h("dt", { text: "Last error" }), h("dd.error", { text: s.last_error || "" }))),
        h("details", {}, h("summary", { text: "Tools" }), h("ul", {}, ...(s.tools || []).map((t) => h("li", {}, h("code", { text: t.name || t }), " ", h("span.muted", { text: t.description || "" }))))),
      )) : [h("p.muted", { text: "No MCP servers are configured." })]));
    } catch (error) {
      toast("MCP servers: " + error.message, true);
    }
  }
  load();
}

export function renderWorkers(main) {
  let timer = null;
  const queue = h("dl.facts");
  const body = h("tbody");
  const all = h("input", { type: "checkbox", name: "include_stopped", onchange: load });
  main.append(h("h1", { text: "Workers" }),
    h("section.panel", { "aria-label": "Run queue" }, queue),
    h("div.row", {}, h("label", { style: "flex-direction:row;align-items:center;gap:6px" }, all, "Show stopped workers")),
    h("div.table-wrap", {}, h("table", { "aria-label": "Workers" },
      h("thead", {}, h("tr", {}, ...["Worker", "Kind", "Host", "PID", "Alive", "Active runs", "Concurrency", "Claims", "Takeovers", "Heartbeat", "Started"].map((t) => h("th", { scope: "col", text: t })))),
      body)));
  async function load() {
    clearTimeout(timer);
    try {
      const { workers, queue: q } = await api("/v1/workers" + (all.checked ? "?include_stopped=true" : ""));
      queue.replaceChildren(...[["Pending", q.pending], ["Ready", q.ready], ["Running", q.running],
        ["Oldest pending", q.oldest_pending_age === null ? dash : Math.round(q.oldest_pending_age) + " s"]]
        .map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: typeof v === "number" ? num(v) : v }))));
      body.replaceChildren(...workers.map((w) => h("tr", {},
        h("td.mono", { text: w.worker_id }), h("td", { text: w.kind }), h("td", { text: w.host }), h("td", { text: w.pid }),
        h("td", { text: w.alive ? "yes" : "no" }), h("td.num", { text: num(w.active_runs) }), h("td.num", { text: num(w.concurrency) }),
        h("td.num", { text: num(w.claims) }), h("td.num", { text: num(w.takeovers) }),
        h("td", { text: when(w.last_heartbeat_at) }), h("td", { text: when(w.started_at) }))));
    } catch (error) {
      toast("Workers: " + error.message, true);
    }
    if (document.body.contains(body)) timer = setTimeout(load, 5000);
  }
  load();
  return () => clearTimeout(timer);
}
