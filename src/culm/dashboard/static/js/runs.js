// Runs: the list, filtered and paged on the server, refreshed while it is on screen.
import { api, cost, dash, duration, field, h, num, query, select, short, statusBadge, when } from "./lib.js";

const PAGE = 50;
const DRAWN = "culm:runs-drawn";
const REFRESH_MS = 2000;
const STATUSES = ["", "pending", "running", "waiting", "completed", "cancelled", "error"];
const TRIGGERS = ["", "api", "cli", "spawn", "schedule"];
// Kept while the tab is open, so going to a run and back keeps the filters.
const state = { status: "", trigger: "", model: "", agent: "", offset: 0 };

export function render(main) {
  let timer = null;
  let stopped = false;
  let hasAgents = false;
  const body = h("tbody");
  const info = h("span.muted", { "aria-live": "polite" });
  const prev = h("button", { type: "button", text: "Newer", onclick: () => page(-PAGE) });
  const next = h("button", { type: "button", text: "Older", onclick: () => page(PAGE) });
  const model = h("input", { name: "model", value: state.model, placeholder: "provider:model", size: 18 });
  const agent = h("input", { name: "agent", value: state.agent, size: 12 });
  const agentField = field("Agent", agent);
  agentField.hidden = true;
  model.addEventListener("change", () => set("model", model.value.trim()));
  agent.addEventListener("change", () => set("agent", agent.value.trim()));

  main.append(
    h("h1", { text: "Runs" }),
    h("form.filters", { role: "search", "aria-label": "Filter runs", onsubmit: (e) => e.preventDefault() },
      field("Status", select("status", STATUSES, state.status, (e) => set("status", e.target.value))),
      field("Trigger", select("trigger", TRIGGERS, state.trigger, (e) => set("trigger", e.target.value))),
      field("Model", model),
      agentField,
    ),
    h("div.table-wrap", {},
      h("table", { "aria-label": "Runs" },
        h("thead", {}, h("tr", {}, ...["Status", "Run", "Agent / model", "Trigger", "Session", "Rounds",
          "Tokens", "Cost", "Duration", "Last tool", "Created"].map((t, i) =>
          h("th" + (i >= 5 && i <= 7 ? ".num" : ""), { scope: "col", text: t })))),
        body)),
    h("div.pager", {}, prev, next, info),
  );

  function set(key, value) { state[key] = value; state.offset = 0; refresh(); }
  function page(delta) { state.offset = Math.max(0, state.offset + delta); refresh(); }

  async function refresh() {
    clearTimeout(timer);
    const params = { limit: PAGE + 1, offset: state.offset, status: state.status, trigger: state.trigger,
      model: state.model, agent: hasAgents ? state.agent : "" };
    try {
      const { runs } = await api("/v1/runs" + query(params));
      if (stopped) return;
      const more = runs.length > PAGE;
      hasAgents = hasAgents || runs.some((run) => "agent" in run);
      agentField.hidden = !hasAgents;
      if (!body.contains(document.activeElement)) body.replaceChildren(...runs.slice(0, PAGE).map(row));
      if (!performance.getEntriesByName(DRAWN).length) performance.mark(DRAWN); // for the speed test
      prev.disabled = state.offset === 0;
      next.disabled = !more;
      const first = runs.length ? state.offset + 1 : 0;
      info.textContent = runs.length
        ? `runs ${first}\u2013${state.offset + Math.min(runs.length, PAGE)}`
        : "no runs match";
    } catch (error) {
      info.textContent = "could not load runs: " + error.message;
    }
    if (!stopped) timer = setTimeout(refresh, document.hidden ? REFRESH_MS * 5 : REFRESH_MS);
  }
  refresh();
  return () => { stopped = true; clearTimeout(timer); };
}

function row(run) {
  const tool = run.last_tool_name ? `${run.last_tool_name} (${run.last_tool_phase || dash})` : dash;
  const who = run.agent ? `${run.agent} \u00b7 ${run.model}` : run.model;
  return h("tr", { "data-run-id": run.run_id, "data-status": run.status },
    h("td", {}, statusBadge(run.status)),
    h("td.mono", {}, h("a", { href: "#/runs/" + run.run_id, text: short(run.run_id), title: run.run_id })),
    h("td", { text: who }),
    h("td", { text: run.trigger }),
    h("td.mono", {}, h("a", { href: "#/sessions/" + run.session_id, text: short(run.session_id) })),
    h("td.num", { text: num(run.round_count) }),
    h("td.num", { text: num(run.usage && run.usage.total_tokens) }),
    h("td.num", { text: cost(run) }),
    h("td", { text: duration(run) }),
    h("td", { text: tool }),
    h("td", { text: when(run.created_at) }),
  );
}
