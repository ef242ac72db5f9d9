// Usage: tokens and cost by day, model, agent and tool; the forward proxy's traffic; charts.
import { columns, bars } from "./chart.js";
import { api, dash, h, num, toast } from "./lib.js";

const money = (c) => (c === null || c === undefined ? dash : "$" + Number(c).toFixed(4));

export function render(main) {
  const summary = h("dl.facts");
  const daily = h("div", { id: "chart-daily" });
  const models = h("div", { id: "chart-models" });
  const agents = h("div", { id: "chart-agents" });
  const tools = h("div", { id: "chart-tools" });
  const forward = h("div", { id: "forward" });
  main.append(h("h1", { text: "Usage" }),
    h("section.panel", { "aria-label": "Totals" }, summary),
    h("section.panel", { "aria-label": "Tokens by day" }, h("h2", { text: "Tokens by day (last 30 days, UTC)" }), daily),
    h("div.grid2", {},
      h("section.panel", { "aria-label": "By model" }, h("h2", { text: "By model" }), models),
      h("section.panel", { "aria-label": "By agent" }, h("h2", { text: "By agent" }), agents),
      h("section.panel", { "aria-label": "By tool" }, h("h2", { text: "Tool calls" }), tools),
      h("section.panel", { "aria-label": "Forward proxy" }, h("h2", { text: "Forward proxy" }), forward)));

  const get = (path) => api(path).catch((error) => ({ error }));
  Promise.all([
    get("/v1/metrics/summary"), get("/v1/metrics/daily?days=30"), get("/v1/metrics/models"),
    get("/v1/metrics/agents"), get("/v1/metrics/tools"), get("/v1/metrics/forward/summary"),
    get("/v1/metrics/forward/endpoints"),
  ]).then(([s, d, m, a, t, fs, fe]) => {
    if (s.error) toast("Usage: " + s.error.message, true);
    else summary.replaceChildren(...[
      ["Runs", num(s.runs)], ["Rounds", num(s.rounds)], ["Tokens", num(s.tokens.total_tokens)],
      ["Prompt / completion", `${num(s.tokens.prompt_tokens)} / ${num(s.tokens.completion_tokens)}`],
      ["Cost", money(s.cost_usd)], ["Tool calls", num(s.tool_calls)], ["Tool failures", num(s.tool_failures)],
      ["Error rate", (100 * s.error_rate).toFixed(1) + " %"],
    ].map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: v }))));
    if (!d.error) {
      daily.replaceChildren(columns(d.periods.map((p) => ({
        label: p.start.slice(5), values: [p.tokens.prompt_tokens, p.tokens.completion_tokens],
      })), { title: "Tokens per day: prompt and completion", series: ["prompt", "completion"] }),
      h("p.muted", { text: "blue: prompt tokens, purple: completion tokens" }));
      if (d.periods.some((p) => p.cost_usd !== undefined && p.cost_usd !== null)) {
        daily.append(h("h2", { text: "Cost by day (USD; unpriced models not counted)" }),
          columns(d.periods.map((p) => ({ label: p.start.slice(5), values: [p.cost_usd || 0] })),
            { title: "Cost per day in USD", series: ["$"] }));
      }
    }
    if (!m.error) models.replaceChildren(table(m.models, "model"), chart(m.models, "model", "Tokens by model"));
    if (a.error) agents.replaceChildren(h("p.muted", { text: "Not reported by this server." }));
    else agents.replaceChildren(table(a.agents || [], "agent"), chart(a.agents || [], "agent", "Tokens by agent"));
    if (!t.error) {
      tools.replaceChildren(bars(t.tools.map((x) => ({ label: x.tool_name, value: x.calls, text: `${x.calls} (${x.failures} failed)` })),
        { title: "Calls by tool" }));
    }
    if (!fs.error) {
      forward.replaceChildren(h("dl.facts", {}, ...[
        ["Requests", num(fs.requests)], ["Errors", num(fs.errors)], ["Timeouts", num(fs.timeouts)],
        ["Tokens", num(fs.tokens.total_tokens)], ["Cost", money(fs.cost_usd)],
        ["Avg latency", fs.avg_latency_ms === null ? dash : Math.round(fs.avg_latency_ms) + " ms"],
      ].map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", { text: v })))),
      fe.error ? "" : bars(fe.endpoints.map((x) => ({ label: x.endpoint, value: x.requests })), { title: "Requests by endpoint" }));
    }
  });
}

function table(rows, key) {
  return h("div.table-wrap", {}, h("table", { "aria-label": "Usage by " + key },
    h("thead", {}, h("tr", {}, ...[key, "Runs", "Rounds", "Tokens", "Cost"].map((x, i) => h("th" + (i ? ".num" : ""), { scope: "col", text: x })))),
    h("tbody", {}, ...rows.map((r) => h("tr", {}, h("td", { text: r[key] }), h("td.num", { text: num(r.runs) }),
      h("td.num", { text: num(r.rounds) }), h("td.num", { text: num(r.tokens.total_tokens) }), h("td.num", { text: money(r.cost_usd) }))))));
}

function chart(rows, key, title) {
  return bars(rows.map((r) => ({ label: r[key], value: r.tokens.total_tokens })), { title });
}
