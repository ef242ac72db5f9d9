// One run: its facts, live transcript, pending input, sub-agents and raw event log.
import { api, cost, dash, duration, h, num, short, statusBadge, TERMINAL, toast, when } from "./lib.js";
import { followRun } from "./stream.js";
import { EventLog, Transcript } from "./transcript.js";

const FRAME_BUDGET_MS = 10; // events drawn per animation frame, so a long run never freezes the tab

export function render(main, runId) {
  let stopped = false;
  let run = null;
  let refreshing = null;
  const title = h("h1", {}, "Run ", h("span.mono", { text: short(runId), title: runId }), " ");
  const badge = h("span", { id: "run-status" });
  title.append(badge);
  const cancel = h("button.danger", { type: "button", text: "Cancel run", onclick: cancelRun });
  const conn = h("span.muted", { id: "stream-state", "aria-live": "polite" });
  const facts = h("dl.facts");
  const inputs = h("section", { "aria-label": "Pending input", id: "pending-input" });
  const transcriptBox = h("div.transcript", { id: "transcript", "aria-live": "off" });
  const children = h("ul", { id: "children" });
  const logBox = h("div.log", { tabindex: "0", role: "log", "aria-label": "Raw events with seq" });
  const counter = h("span.muted");

  main.append(
    h("div.row", {}, title, cancel, conn),
    h("section.panel", { "aria-label": "Run facts" }, facts),
    inputs,
    h("div.cols", {},
      h("section", { "aria-label": "Transcript" }, h("h2", { text: "Transcript" }),
        h("div.block.user", { id: "run-input" }), transcriptBox),
      h("section", {},
        h("h2", { text: "Sub-agents" }), children,
        h("h2", {}, "Event log ", counter), logBox)),
  );

  const transcript = new Transcript(transcriptBox, { onInput: loadInputs });
  const log = new EventLog(logBox);
  const queue = [];
  let draining = false;
  let total = 0;

  function drain() {
    draining = true;
    const start = performance.now();
    while (queue.length && performance.now() - start < FRAME_BUDGET_MS) {
      const events = queue.shift().map((frame) => JSON.parse(frame.data));
      for (const event of events) transcript.handle(event);
      log.push(events);
    }
    counter.textContent = `(${num(total)})`;
    if (queue.length && !stopped) requestAnimationFrame(drain);
    else draining = false;
  }

  function onEvents(batch) {
    total += batch.length;
    // big replays arrive as big batches: cut them so each frame does a bounded amount of work
    for (let i = 0; i < batch.length; i += 200) queue.push(batch.slice(i, i + 200));
    if (!draining) requestAnimationFrame(drain);
    if (batch.some((e) => e.type !== "token" && e.type !== "reasoning_token" && e.type !== "tool_token")) refreshSoon();
  }

  function refreshSoon() {
    if (refreshing) return;
    refreshing = setTimeout(() => { refreshing = null; load(); }, 500);
  }

  async function load() {
    try {
      run = await api(`/v1/runs/${encodeURIComponent(runId)}`);
    } catch (error) {
      if (!run) main.replaceChildren(h("h1", { text: "Run not found" }), h("p.error", { text: error.message }));
      return;
    }
    if (stopped) return;
    badge.replaceChildren(statusBadge(run.status));
    cancel.disabled = TERMINAL.has(run.status);
    document.getElementById("run-input").textContent = run.input || "";
    drawFacts();
    drawChildren();
    // a waiting child's requests are answered here too (GET …/input lists those below the run)
    if (run.status === "waiting" || (run.children || []).some((c) => c.status === "waiting")) loadInputs();
    else if (TERMINAL.has(run.status)) inputs.replaceChildren();
  }

  function drawFacts() {
    const u = run.usage || {};
    const all = run.usage_with_descendants || {};
    const items = [
      ["Status", run.status], ["Agent", run.agent ?? dash], ["Model", run.model], ["Trigger", run.trigger],
      ["Session", h("a.mono", { href: "#/sessions/" + run.session_id, text: short(run.session_id) })],
      ["Parent run", run.parent_run_id ? h("a.mono", { href: "#/runs/" + run.parent_run_id, text: short(run.parent_run_id) }) : dash],
      ["Rounds", num(run.round_count)],
      ["Tokens (in / out)", `${num(u.prompt_tokens)} / ${num(u.completion_tokens)}`],
      ["Tokens with sub-agents", num(all.total_tokens)],
      ["Cost", cost(run)],
      ["Created", when(run.created_at)], ["Started", when(run.started_at)],
      ["Duration", duration(run)],
      ["Last tool", run.last_tool_name ? `${run.last_tool_name} (${run.last_tool_phase})` : dash],
      ["Last event", when(run.last_event_at)], ["Last seq", num(run.last_seq)],
      ["Attempt", num(run.attempt)], ["Owner", run.owner || dash],
    ];
    // a parent that is running while its sub-agent waits for a person: say so, and where
    const waitingOn = (run.children || []).filter((c) => c.status === "waiting");
    if (waitingOn.length) {
      items.splice(1, 0, ["Waiting on", h("span", { id: "waiting-on" }, "sub-agent ",
        ...waitingOn.flatMap((c, i) => [i ? ", " : "", h("a.mono", { href: "#/runs/" + c.run_id, text: short(c.run_id) })]))]);
    }
    if (run.error) items.push(["Error", h("span.error", { text: run.error })]);
    facts.replaceChildren(...items.map(([k, v]) => h("div", {}, h("dt", { text: k }), h("dd", {}, v))));
  }

  function drawChildren() {
    const list = run.children || [];
    children.replaceChildren(...(list.length ? list.map((c) => h("li", {},
      h("a.mono", { href: "#/runs/" + c.run_id, text: short(c.run_id) }), " ", statusBadge(c.status)))
      : [h("li.muted", { text: "none" })]));
  }

  async function cancelRun() {
    cancel.disabled = true;
    try {
      await api(`/v1/runs/${encodeURIComponent(runId)}/cancel`, { method: "POST" });
      toast("Cancel requested");
      load();
    } catch (error) {
      cancel.disabled = false;
      toast("Cancel failed: " + error.message, true);
    }
  }

  async function loadInputs() {
    let requests = [];
    try {
      ({ requests } = await api(`/v1/runs/${encodeURIComponent(runId)}/input`));
    } catch (error) {
      if (error.status !== 404 && error.status !== 405) toast("Pending input: " + error.message, true);
      return; // a server without people-in-the-loop has no such route
    }
    if (stopped) return;
    inputs.replaceChildren(...requests.map((r) => inputForm(r, (body) => answer(r.run_id || runId, body), runId)));
  }

  async function answer(owner, body) {
    try {
      // a request is answered on its own run: a sub-agent's on the sub-agent's id
      await api(`/v1/runs/${encodeURIComponent(owner)}/input`, { method: "POST", body });
      loadInputs();
    } catch (error) {
      toast("Could not answer: " + error.message, true);
    }
  }

  load();
  const stream = followRun(runId, {
    onEvents,
    onState: (s) => {
      conn.textContent = { live: "\u25cf live", reconnecting: "reconnecting\u2026", ended: "stream ended" }[s];
      conn.dataset.state = s;
      if (s === "live") conn.dataset.connects = String(Number(conn.dataset.connects || 0) + 1);
      if (s === "ended") load();
    },
  });
  return () => { stopped = true; stream.stop(); clearTimeout(refreshing); };
}

function inputForm(r, answer, runId) {
  const id = "input-" + r.request_id;
  const from = r.run_id && r.run_id !== runId
    ? [h("a.mono", { href: "#/runs/" + r.run_id, text: "Sub-agent " + short(r.run_id) }), " \u00b7 "] : [];
  if (r.kind === "question") {
    const text = h("input", { id: id + "-answer", name: "answer", size: 40 });
    const choices = (r.choices || []).map((c) => h("button", { type: "button", text: c, onclick: () => answer({ request_id: r.request_id, answer: c }) }));
    return h("form.input-request", { "data-request-id": r.request_id, onsubmit: (e) => { e.preventDefault(); answer({ request_id: r.request_id, answer: text.value }); } },
      h("p", {}, ...from, h("strong", { text: "Question: " }), r.question || ""),
      h("div.row", {}, ...choices, h("label", {}, "Answer", text), h("button.primary", { type: "submit", text: "Send answer" })));
  }
  const reason = h("input", { name: "reason", size: 30 });
  const decide = (approve) => answer({ request_id: r.request_id, approve, ...(reason.value ? { reason: reason.value } : {}) });
  return h("form.input-request", { "data-request-id": r.request_id, onsubmit: (e) => e.preventDefault() },
    h("p", {}, ...from, h("strong", { text: "Approval needed: " }), "tool ", h("code", { text: r.tool_name || "" })),
    h("pre", { "aria-label": "tool arguments", text: JSON.stringify(r.arguments, null, 2) }),
    h("div.row", {},
      h("button.primary", { type: "button", text: "Approve", onclick: () => decide(true) }),
      h("button.danger", { type: "button", text: "Deny", onclick: () => decide(false) }),
      h("label", {}, "Reason (optional)", reason)));
}
