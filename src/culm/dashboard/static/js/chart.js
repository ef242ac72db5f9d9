// SVG charts drawn by hand: vertical bars over time and horizontal bars by name.
const NS = "http://www.w3.org/2000/svg";

function svg(tag, attrs = {}, text) {
  const el = document.createElementNS(NS, tag);
  for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
  if (text !== undefined) el.textContent = text;
  return el;
}

function compact(n) {
  return Intl.NumberFormat("en", { notation: "compact", maximumFractionDigits: 1 }).format(n);
}

/** Stacked columns: points = [{label, values: [a, b]}]; series names label the two colours. */
export function columns(points, { title, series = ["", ""], height = 180 }) {
  const width = Math.max(320, points.length * 18 + 50);
  const max = Math.max(1, ...points.map((p) => p.values.reduce((a, b) => a + b, 0)));
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height + 30}`, role: "img", "aria-label": title });
  root.append(svg("title", {}, title));
  root.append(svg("line", { x1: 44, x2: width, y1: height, y2: height }));
  root.append(svg("text", { x: 40, y: 12, "text-anchor": "end" }, compact(max)));
  root.append(svg("text", { x: 40, y: height, "text-anchor": "end" }, "0"));
  const step = (width - 50) / Math.max(1, points.length);
  points.forEach((p, i) => {
    let y = height;
    p.values.forEach((v, j) => {
      const hgt = (v / max) * (height - 10);
      if (hgt > 0) {
        const bar = svg("rect", { class: j ? "bar2" : "bar", x: 48 + i * step, y: y - hgt, width: Math.max(2, step - 3), height: hgt });
        bar.append(svg("title", {}, `${p.label}: ${series[j]} ${v.toLocaleString("en")}`));
        root.append(bar);
      }
      y -= hgt;
    });
    if (points.length <= 14 || i % Math.ceil(points.length / 10) === 0) {
      root.append(svg("text", { x: 48 + i * step, y: height + 16 }, p.label));
    }
  });
  return root;
}

/** Horizontal bars: rows = [{label, value, text?}]. */
export function bars(rows, { title, width = 480 }) {
  const rowH = 22;
  const height = Math.max(1, rows.length) * rowH + 6;
  const max = Math.max(1, ...rows.map((r) => r.value));
  const root = svg("svg", { class: "chart", viewBox: `0 0 ${width} ${height}`, role: "img", "aria-label": title });
  root.append(svg("title", {}, title));
  const labelW = 170;
  rows.forEach((r, i) => {
    const y = i * rowH + 4;
    root.append(svg("text", { x: labelW - 6, y: y + 13, "text-anchor": "end" }, r.label.length > 26 ? r.label.slice(0, 25) + "\u2026" : r.label));
    const w = (r.value / max) * (width - labelW - 70);
    root.append(svg("rect", { class: "bar", x: labelW, y, width: Math.max(1, w), height: rowH - 6 }));
    root.append(svg("text", { x: labelW + w + 4, y: y + 13 }, r.text ?? compact(r.value)));
  });
  return root;
}
