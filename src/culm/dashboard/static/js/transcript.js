// A run's events drawn as a transcript: text streams into one block per turn, reasoning is
// folded, each tool call shows its arguments, live output and result, errors are red, and each
// sub-agent gets a nested transcript fed by its sub_agent_event wrappers.
import { h, num, short, statusBadge } from "./lib.js";

export class Transcript {
  constructor(container, { onInput = () => {}, depth = 0 } = {}) {
    this.root = container;
    this.onInput = onInput;
    this.depth = depth;
    this.text = null;       // the Text node tokens go to, while no other block came between
    this.reasoning = null;
    this.tools = new Map(); // tool_call_id -> {block, output, summary}
    this.children = new Map(); // child_run_id -> {block, transcript, state}
  }

  add(el) { this.root.append(el); this.text = null; this.reasoning = null; return el; }

  note(text, cls = "note") { this.add(h("div.block." + cls, { text })); }

  handle(event) {
    const fn = this["on_" + event.type];
    if (fn) fn.call(this, event);
  }

  on_token(e) {
    if (!this.text) {
      const node = document.createTextNode("");
      this.add(h("div.block.text", { "data-kind": "assistant" }, node));
      this.text = node;
    }
    this.text.appendData(e.content);
  }

  on_reasoning_token(e) {
    if (!this.reasoning) {
      const node = document.createTextNode("");
      this.add(h("details.block.note", { "data-kind": "reasoning" }, h("summary", { text: "Reasoning" }), h("pre", {}, node)));
      this.reasoning = node;
    }
    this.reasoning.appendData(e.content);
  }

  on_tool_start(e) {
    const output = h("pre", { "aria-label": "live output", hidden: true });
    const status = h("span.muted", { text: " running\u2026" });
    const block = h("details.block.tool", { open: true, "data-tool-call-id": e.tool_call_id },
      h("summary", {}, h("strong", { text: e.tool_name }), status),
      h("pre", { "aria-label": "arguments", text: JSON.stringify(e.arguments, null, 2) }),
      output);
    this.add(block);
    this.tools.set(e.tool_call_id, { block, output, status });
  }

  tool(e) {
    if (!this.tools.has(e.tool_call_id)) this.on_tool_start({ ...e, arguments: {} });
    return this.tools.get(e.tool_call_id);
  }

  on_tool_token(e) {
    const t = this.tool(e);
    t.output.hidden = false;
    t.output.append(e.content);
  }

  on_tool_complete(e) {
    const t = this.tool(e);
    t.status.textContent = ` done in ${num(e.elapsed_ms)} ms`;
    t.block.append(h("pre", { "aria-label": "result", text: typeof e.result === "string" ? e.result : JSON.stringify(e.result, null, 2) }));
  }

  on_tool_error(e) {
    const t = this.tool(e);
    t.block.classList.add("bad");
    t.status.textContent = ` failed after ${num(e.elapsed_ms)} ms`;
    t.block.append(h("pre.error", { role: "alert", text: e.error }));
  }

  on_round_completed(e) {
    const u = e.usage || {};
    const costText = e.cost_usd === null || e.cost_usd === undefined ? "" : ` \u00b7 $${Number(e.cost_usd).toFixed(4)}`;
    this.note(`round ${e.round} \u00b7 ${e.model} \u00b7 ${num(u.prompt_tokens)} in / ${num(u.completion_tokens)} out \u00b7 ${num(e.latency_ms)} ms${costText}`);
  }

  child(e) {
    let c = this.children.get(e.child_run_id);
    if (!c) {
      const inner = h("div.transcript");
      const state = h("span", {}, statusBadge("running"));
      const title = h("summary", {}, "Sub-agent ", h("strong", { text: e.title || "" }), " ",
        h("a.mono", { href: "#/runs/" + e.child_run_id, text: short(e.child_run_id) }), " ", state);
      const block = h("details.block.child", { open: this.depth < 2, "data-child-run-id": e.child_run_id }, title, inner);
      this.add(block);
      // a sub-agent's requests are answered from this page too: the same onInput reloads them
      c = { block, state, transcript: new Transcript(inner, { depth: this.depth + 1, onInput: this.onInput }) };
      this.children.set(e.child_run_id, c);
    }
    return c;
  }

  on_sub_agent_started(e) { this.child(e); }
  on_sub_agent_event(e) {
    const c = this.child(e);
    c.transcript.handle(e.event);
    // the child's badge says when it waits for a person, and this run that it waits on the child
    // (a grandchild's request comes wrapped twice: its whole branch waits)
    let inner = e.event;
    while (inner.type === "sub_agent_event" && inner.event) inner = inner.event;
    if (inner.type === "input_requested") this.waitingOn(c, true);
    else if (inner.type === "input_received") this.waitingOn(c, false);
  }
  waitingOn(c, waiting) {
    c.state.replaceChildren(statusBadge(waiting ? "waiting" : "running"));
    c.block.dataset.waiting = String(waiting);
    if (waiting) this.note(`waiting on sub-agent ${short(c.block.dataset.childRunId)}`, "waiting");
  }
  on_sub_agent_completed(e) {
    const c = this.child(e);
    c.state.replaceChildren(statusBadge(e.status));
    if (e.error) c.block.append(h("div.block.error", { text: e.error }));
  }

  on_error(e) { this.add(h("div.block.error", { role: "alert", text: `Error${e.code ? " (" + e.code + ")" : ""}: ${e.message}` })); }
  on_cancelled(e) { this.note("Cancelled: " + (e.reason || ""), "bad"); }
  on_complete() { this.note("Complete"); }
  on_gap(e) { this.note(`events ${e.from_seq}\u2013${e.to_seq} are no longer stored`); }
  on_run_recovered(e) { this.note(`recovered after attempt ${e.previous_attempt}: ${e.action}`); }
  on_context_pressure(e) { this.note(`context ${e.percent}% full (${e.level})`); }
  on_context_compacted(e) { this.note(`context compacted: ${num(e.tokens_before)} \u2192 ${num(e.tokens_after)} tokens`); }
  on_input_requested(e) {
    this.note(e.kind === "question" ? `asked: ${e.question}` : `waiting for approval of ${e.tool_name}`);
    this.onInput();
  }
  on_input_received() { this.note("input received"); this.onInput(); }
}

/** The raw event log: only the rows on screen exist in the DOM, so 50,000 events stay light. */
export class EventLog {
  static ROW = 20;

  constructor(container) {
    this.box = container;
    this.rows = [];
    this.spacer = h("div", { style: "height:0" });
    this.view = h("div");
    this.box.append(this.spacer, this.view);
    this.pending = false;
    this.box.addEventListener("scroll", () => this.schedule());
  }

  push(events) {
    for (const e of events) {
      const { seq, type, run_id, session_id, ts, ...rest } = e;
      const body = JSON.stringify(rest);
      this.rows.push(`${String(seq).padStart(6)}  ${type}  ${body.length > 400 ? body.slice(0, 400) + "\u2026" : body}`);
    }
    this.schedule();
  }

  schedule() {
    if (this.pending) return;
    this.pending = true;
    requestAnimationFrame(() => { this.pending = false; this.draw(); });
  }

  draw() {
    const R = EventLog.ROW;
    const atBottom = this.box.scrollTop + this.box.clientHeight >= this.spacer.offsetHeight - 2 * R;
    this.spacer.style.height = this.rows.length * R + "px";
    if (atBottom) this.box.scrollTop = this.rows.length * R;
    const first = Math.max(0, Math.floor(this.box.scrollTop / R) - 10);
    const last = Math.min(this.rows.length, first + Math.ceil(this.box.clientHeight / R) + 20);
    const els = [];
    for (let i = first; i < last; i++) {
      els.push(h("div.row-e.mono", { style: `top:${i * R}px`, text: this.rows[i] }));
    }
    this.view.replaceChildren(...els);
  }
}
