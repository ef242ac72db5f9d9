// Server-sent events over fetch, resumed from the last seq after a dropped connection.

const TERMINAL_EVENTS = new Set(["complete", "cancelled", "error"]);

/**
 * Follow a run's events from seq `after`: onEvents(batch) gets each batch once, in order, without
 * duplicates, across reconnects (each one asks for ?after=<last seq seen>). Ends after the
 * terminal event. onState("live" | "reconnecting" | "ended") tells the connection's state.
 * A batch holds frames {seq, type, data}: `data` is the event's JSON text, left unparsed so a
 * big replay is parsed bit by bit by the page (JSON.parse of 50,000 events at once would
 * block the tab).
 */
export function followRun(runId, { after = 0, onEvents, onState = () => {} }) {
  let last = after;
  let stopped = false;
  let controller = null;
  let delay = 250;

  async function connect() {
    while (!stopped) {
      controller = new AbortController();
      let ended = false;
      try {
        const response = await fetch(`/v1/runs/${encodeURIComponent(runId)}/events?after=${last}`, {
          headers: { Accept: "text/event-stream" }, signal: controller.signal, credentials: "same-origin",
        });
        if (response.status === 404 || response.status === 401) { onState("ended"); return; }
        if (!response.ok) throw new Error("HTTP " + response.status);
        onState("live");
        delay = 250;
        ended = await read(response.body, (batch) => {
          const fresh = batch.filter((event) => event.seq === undefined || event.seq > last);
          for (const event of fresh) if (event.seq > last) last = event.seq;
          if (fresh.length) onEvents(fresh);
          return fresh.some((event) => TERMINAL_EVENTS.has(event.type));
        });
      } catch (error) {
        if (stopped) return;
      }
      if (ended || stopped) { onState("ended"); return; }
      onState("reconnecting");
      await new Promise((resolve) => setTimeout(resolve, delay));
      delay = Math.min(delay * 2, 5000);
    }
  }

  connect();
  return {
    get last() { return last; },
    stop() { stopped = true; if (controller) controller.abort(); },
  };
}

/** Parse an SSE body; deliver the events of each chunk as one batch. True once terminal. */
async function read(body, deliver) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return false;
    buffer += value;
    const frames = buffer.split(/\r?\n\r?\n/);
    buffer = frames.pop();
    // a big chunk (a replay) is cut into slices with a yield to the page between them
    for (let i = 0; i < frames.length; i += SLICE) {
      if (i) await new Promise((resolve) => setTimeout(resolve, 0));
      const batch = frames.slice(i, i + SLICE).map(frame).filter((f) => f.data !== null);
      if (batch.length && deliver(batch)) { reader.cancel().catch(() => {}); return true; }
    }
  }
}

const SLICE = 1000;

function frame(text) {
  const data = [];
  let seq;
  let type = "message";
  for (const line of text.split(/\r?\n/)) {
    if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
    else if (line.startsWith("id:")) seq = Number(line.slice(3));
    else if (line.startsWith("event:")) type = line.slice(6).trim();
  }
  return { seq, type, data: data.length ? data.join("\n") : null };
}
