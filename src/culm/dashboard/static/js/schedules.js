// Schedules: the list with their next fires (in each schedule's zone) and cron in plain words,
// pause / resume, run now, create and edit (the API's validation messages shown as they come),
// and the recent fires with their runs.
import { api, dash, field, h, select, short, statusBadge, toast, when } from "./lib.js";

export function render(main) {
  const list = h("div", { id: "schedule-list" });
  const editor = h("div");
  const newButton = h("button.primary", { type: "button", text: "New schedule", onclick: () => edit(null) });
  main.append(h("div.row", {}, h("h1", { text: "Schedules" }), newButton), editor, list);

  async function load() {
    try {
      const { schedules } = await api("/v1/schedules?limit=200");
      list.replaceChildren(...(schedules.length ? schedules.map(card) : [h("p.muted", { text: "No schedules yet." })]));
    } catch (error) {
      toast("Schedules: " + error.message, true);
    }
  }

  function card(s) {
    const words = h("span", { text: triggerText(s.trigger) });
    const fires = h("ul.mono");
    const recent = h("tbody");
    api(`/v1/schedules/${s.schedule_id}/upcoming?count=3`).then((u) => {
      words.textContent = u.description;
      fires.replaceChildren(...(u.fires.length ? u.fires.map((f) => h("li", { text: inZone(f, s.timezone) })) : [h("li.muted", { text: "none (paused or done)" })]));
    }).catch(() => {});
    const action = async (label, path, body, method = "POST") => {
      try {
        await api(path, { method, body });
        toast(label);
        load();
      } catch (error) {
        toast(`${label} failed: ${error.message}`, true);
      }
    };
    const base = `/v1/schedules/${s.schedule_id}`;
    const showFires = h("details", {
      ontoggle: async (e) => {
        if (!e.target.open) return;
        const { runs } = await api(base + "/runs?limit=10");
        recent.replaceChildren(...runs.map((f) => h("tr", {},
          h("td", { text: inZone(f.scheduled_for, s.timezone) }), h("td", {}, statusBadge(f.status)),
          h("td", {}, f.run_id ? h("a.mono", { href: "#/runs/" + f.run_id, text: short(f.run_id) }) : dash),
          h("td", { text: f.manual ? "run now" : "clock" }), h("td.error", { text: f.error || "" }))));
      },
    }, h("summary", { text: "Recent fires" }), h("div.table-wrap", {}, h("table", { "aria-label": "Recent fires of " + s.name }, recent)));
    return h("section.panel", { "aria-label": "Schedule " + s.name, "data-schedule-id": s.schedule_id },
      h("div.row", {}, h("h2", { text: s.name }), s.enabled ? h("span.status.status-running", { text: "active" }) : h("span.status.status-cancelled", { text: "paused" })),
      h("dl.facts", {},
        fact("When", words), fact("Zone", s.timezone), fact("Next fires", fires),
        fact("Message", s.run_config.message), fact("Model", s.run_config.model || "default"),
        fact("Last success", when(s.last_success_at)), fact("Last failure", when(s.last_failure_at)),
        fact("Last error", h("span.error", { text: s.last_error || "" }))),
      h("div.row", {},
        h("button", { type: "button", text: s.enabled ? "Pause" : "Resume", onclick: () => action(s.enabled ? "Paused" : "Resumed", base, { enabled: !s.enabled }, "PATCH") }),
        h("button", { type: "button", text: "Run now", onclick: () => action("Fired", base + "/trigger") }),
        h("button", { type: "button", text: "Edit", onclick: () => edit(s) }),
        h("button.danger", { type: "button", text: "Delete", onclick: () => confirm(`Delete ${s.name}?`) && action("Deleted", base, undefined, "DELETE") })),
      showFires);
  }

  function edit(s) {
    const t = (s && s.trigger) || { type: "cron", expr: "0 9 * * 1-5" };
    const name = h("input", { name: "name", value: s ? s.name : "", required: true });
    const kind = select("trigger-type", [["cron", "cron"], ["interval", "interval"], ["once", "once"]], t.type, () => show());
    const expr = h("input", { name: "expr", value: t.expr || "", placeholder: "0 9 * * 1-5", size: 16 });
    const every = h("input", { name: "every_seconds", type: "number", min: 1, value: t.every_seconds || 3600 });
    const at = h("input", { name: "at", type: "datetime-local", value: t.at ? t.at.slice(0, 16) : "" });
    const zone = h("input", { name: "timezone", value: s ? s.timezone : Intl.DateTimeFormat().resolvedOptions().timeZone });
    const message = h("input", { name: "message", size: 40, value: s ? s.run_config.message : "" });
    const model = h("input", { name: "model", value: s ? s.run_config.model || "" : "", placeholder: "default model" });
    const problem = h("div", { role: "alert", id: "schedule-problem" });
    const fields = { cron: field("Cron expression", expr), interval: field("Every (seconds)", every), once: field("At (wall clock in the zone)", at) };
    function show() { for (const [k, el] of Object.entries(fields)) el.hidden = k !== kind.value; }
    show();
    const form = h("form.panel", { "aria-label": s ? "Edit schedule" : "New schedule", onsubmit: async (e) => {
      e.preventDefault();
      const trigger = kind.value === "cron" ? { type: "cron", expr: expr.value }
        : kind.value === "interval" ? { type: "interval", every_seconds: Number(every.value) }
        : { type: "once", at: at.value };
      const body = { name: name.value, trigger, timezone: zone.value, run_config: { message: message.value, ...(model.value ? { model: model.value } : {}) } };
      try {
        await api(s ? `/v1/schedules/${s.schedule_id}` : "/v1/schedules", { method: s ? "PATCH" : "POST", body });
        editor.replaceChildren();
        toast(s ? "Schedule saved" : "Schedule created");
        load();
      } catch (error) {
        const where = error.body && error.body.error && error.body.error.field;
        problem.replaceChildren(h("p.message-bad", {}, where ? h("strong", { text: where + ": " }) : "", error.message));
      }
    } },
      h("h2", { text: s ? "Edit " + s.name : "New schedule" }),
      h("div.row", {}, field("Name", name), field("Trigger", kind), ...Object.values(fields), field("Time zone", zone)),
      h("div.row", {}, field("Message", message), field("Model", model)),
      problem,
      h("div.row", {}, h("button.primary", { type: "submit", text: s ? "Save" : "Create" }),
        h("button", { type: "button", text: "Close", onclick: () => editor.replaceChildren() })));
    editor.replaceChildren(form);
    name.focus();
  }

  load();
}

function fact(k, v) { return h("div", {}, h("dt", { text: k }), h("dd", {}, v)); }

function triggerText(t) {
  if (t.type === "cron") return t.expr;
  if (t.type === "interval") return `every ${t.every_seconds} s`;
  return "once at " + t.at;
}

function inZone(iso, zone) {
  try {
    return new Date(iso).toLocaleString(undefined, { timeZone: zone, dateStyle: "medium", timeStyle: "short" }) + " " + zone;
  } catch {
    return iso;
  }
}
