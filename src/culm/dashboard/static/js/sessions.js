// Sessions: the list, and one session's transcript with a box to send a new message.
import { api, h, short, statusBadge, toast, when } from "./lib.js";

export function render(main) {
  const body = h("tbody");
  main.append(h("h1", { text: "Sessions" }),
    h("div.table-wrap", {}, h("table", { "aria-label": "Sessions" },
      h("thead", {}, h("tr", {}, ...["Session", "Model", "Kind", "Tools", "Created"].map((t) => h("th", { scope: "col", text: t })))),
      body)));
  api("/v1/sessions?limit=200").then(({ sessions }) => {
    body.replaceChildren(...sessions.map((s) => h("tr", {},
      h("td.mono", {}, h("a", { href: "#/sessions/" + s.session_id, text: short(s.session_id), title: s.session_id })),
      h("td", { text: s.agent ? `${s.agent} \u00b7 ${s.model}` : s.model }),
      h("td", { text: s.kind }),
      h("td", { text: (s.tools || []).join(", ") }),
      h("td", { text: when(s.created_at) }))));
  }).catch((error) => toast("Sessions: " + error.message, true));
}

export function renderOne(main, sessionId) {
  let stopped = false;
  let timer = null;
  const messages = h("div.transcript", { id: "messages" });
  const runs = h("ul");
  const problem = h("div", { role: "alert" });
  const text = h("textarea", { name: "message", rows: 3, cols: 60, required: true });
  const send = h("button.primary", { type: "submit", text: "Send" });
  const form = h("form.panel", { onsubmit: submit, "aria-label": "New message" },
    h("label", {}, "New message (starts a run)", text), h("div.row", {}, send), problem);
  main.append(h("h1", {}, "Session ", h("span.mono", { text: short(sessionId), title: sessionId })),
    form,
    h("div.cols", {},
      h("section", { "aria-label": "Transcript" }, h("h2", { text: "Transcript" }), messages),
      h("section", { "aria-label": "Runs of this session" }, h("h2", { text: "Runs" }), runs)));

  async function submit(event) {
    event.preventDefault();
    problem.replaceChildren();
    send.disabled = true;
    try {
      const run = await api(`/v1/sessions/${encodeURIComponent(sessionId)}/runs`, { method: "POST", body: { message: text.value } });
      text.value = "";
      location.hash = "#/runs/" + run.run_id;
    } catch (error) {
      const active = error.body && error.body.error && error.body.error.run_id;
      problem.replaceChildren(h("p.message-bad", {},
        error.status === 409 ? "This session already has an active run" : `Not sent (${error.code})`,
        ": ", error.message, active ? " " : "",
        active ? h("a", { href: "#/runs/" + active, text: "open the active run" }) : ""));
    } finally {
      send.disabled = false;
    }
  }

  async function load() {
    try {
      const [{ messages: list }, { runs: runList }] = await Promise.all([
        api(`/v1/sessions/${encodeURIComponent(sessionId)}/messages`),
        api(`/v1/sessions/${encodeURIComponent(sessionId)}/runs?limit=50`),
      ]);
      if (stopped) return;
      messages.replaceChildren(...list.map(message));
      runs.replaceChildren(...runList.map((r) => h("li", {},
        h("a.mono", { href: "#/runs/" + r.run_id, text: short(r.run_id) }), " ", statusBadge(r.status), " ", when(r.created_at))));
    } catch (error) {
      toast("Session: " + error.message, true);
    }
    if (!stopped) timer = setTimeout(load, 3000);
  }
  load();
  return () => { stopped = true; clearTimeout(timer); };
}

function message(m) {
  if (m.role === "user") return h("div.block.user", { text: m.content });
  if (m.role === "tool") {
    return h("details.block.tool" + (m.is_error ? ".bad" : ""), {},
      h("summary", {}, "result of ", h("strong", { text: m.tool_name || "" })), h("pre", { text: m.content }));
  }
  const parts = [];
  if (m.reasoning) parts.push(h("details.block.note", {}, h("summary", { text: "Reasoning" }), h("pre", { text: m.reasoning })));
  if (m.content) parts.push(h("div.block.text", { text: m.content }));
  for (const call of m.tool_calls || []) {
    parts.push(h("div.block.tool", {}, h("strong", { text: call.name || (call.function && call.function.name) || "tool" }),
      h("pre", { text: typeof call.arguments === "string" ? call.arguments : JSON.stringify(call.arguments ?? call, null, 2) })));
  }
  return h("div", {}, ...parts);
}
