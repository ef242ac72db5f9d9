"""The figures of bench/peers.py: each system's median over the pairs, the ratios culm/peer
per pair (min–max), the issue's targets against the OpenAI Agents SDK, and the markdown table."""

from __future__ import annotations

import statistics
from typing import Any

# scenario: (metric, label, unit, lower is better)
METRICS: dict[str, list[tuple[str, str, str, bool]]] = {
    "seq": [
        ("cpu_ms_per_run", "CPU per run", "ms", True),
        ("wall_ms_p50", "wall per run p50", "ms", True),
    ],
    "conc": [
        ("runs_per_s", "runs/s", "", False),
        ("cpu_ms_per_run", "CPU per run", "ms", True),
        ("first_token_ms_p50", "first token p50", "ms", True),
        ("first_token_ms_p99", "first token p99", "ms", True),
    ],
    "parked": [
        ("all_waiting_s", "all waiting", "s", True),
        ("cpu_s", "CPU until all waiting", "s", True),
        ("rss_kb_per_run", "RSS per run", "KiB", True),
    ],
    "cold": [("cold_s", "cold start", "s", True)],
    "http": [
        ("runs_per_s", "runs/s", "", False),
        ("server_cpu_ms_per_run", "server CPU per run", "ms", True),
        ("first_token_ms_p50", "first token p50", "ms", True),
        ("first_token_ms_p99", "first token p99", "ms", True),
    ],
}
TARGET_PEER = "openai-agents"
# (scenario, mode, metric): (operator, bound) on the median ratio culm/Agents SDK (issue 16)
TARGETS: dict[tuple[str, str, str], tuple[str, float]] = {
    ("seq", "stream", "cpu_ms_per_run"): ("<=", 0.8),
    ("conc", "stream", "first_token_ms_p50"): ("<=", 1.0),
    ("conc", "stream", "first_token_ms_p99"): ("<=", 1.2),
    ("conc", "stream", "runs_per_s"): (">=", 1.3),
    ("parked", "parked", "all_waiting_s"): ("<=", 1.0),
}


def one_line(result: dict[str, Any]) -> str:
    figures = [
        f"{label} {result[metric]:.4g}{unit}"
        for metric, label, unit, _ in METRICS.get(result.get("scenario", ""), [])
        if isinstance(result.get(metric), int | float)
    ]
    errors = f", {result['error_count']} errors" if result.get("error_count") else ""
    return f"{result.get('system')}: {', '.join(figures)}{errors}"


def summarize(sets: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per scenario and mode: every system's median per metric and culm's ratios to it."""
    rows: list[dict[str, Any]] = []
    for measured in sets:
        scenario, mode = measured["scenario"], measured["mode"]
        by_system: dict[str, dict[int, dict[str, Any]]] = {}
        for result in measured["results"]:
            by_system.setdefault(result["system"], {})[result["pair"]] = result
        for metric, label, unit, lower in METRICS[scenario]:
            row: dict[str, Any] = {"scenario": scenario, "mode": mode, "metric": metric}
            row |= {"label": label, "unit": unit, "lower_is_better": lower, "systems": {}}
            culm = by_system.get("culm", {})
            for system, pairs in by_system.items():
                values = [
                    r[metric] for r in pairs.values() if isinstance(r.get(metric), int | float)
                ]
                entry: dict[str, Any] = {"median": statistics.median(values) if values else None}
                # parked: some runs were not all on the wire by the deadline (a lower bound)
                entry["partial"] = any(r.get("all_waiting") is False for r in pairs.values())
                ratios = [
                    culm[p][metric] / r[metric]
                    for p, r in pairs.items()
                    if system != "culm" and p in culm and r.get(metric) and metric in culm[p]
                ]
                if ratios:
                    entry["ratio"] = statistics.median(ratios)
                    entry["ratio_min"], entry["ratio_max"] = min(ratios), max(ratios)
                row["systems"][system] = entry
            target = TARGETS.get((scenario, mode, metric))
            peer = row["systems"].get(TARGET_PEER, {})
            if target and "ratio" in peer:
                op, bound = target
                met = peer["ratio"] <= bound if op == "<=" else peer["ratio"] >= bound
                met = met and not row["systems"].get("culm", {}).get("partial")
                row["target"] = {"vs": TARGET_PEER, "op": op, "bound": bound, "met": met}
            rows.append(row)
    return rows


def figure(value: float) -> str:
    """Three significant digits, without an exponent: 0.123, 12.3, 1,234."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def markdown(meta: dict[str, Any], rows: list[dict[str, Any]]) -> str:
    systems: list[str] = []
    for row in rows:
        systems += [s for s in row["systems"] if s not in systems]
    peers = [s for s in systems if s != "culm"]
    head = ["scenario", "mode", "metric", *systems, *(f"culm/{p}" for p in peers), "target"]
    lines = [
        f"Started {meta['started']}, load before {meta['load_before']}, after "
        f"{meta.get('load_after')}; {meta.get('seconds')} s. culm: embedded Engine, SQLite, "
        "every event persisted; the peers persist nothing (langgraph+sqlite: its checkpointer).",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    for row in rows:
        cells = [row["scenario"], row["mode"], f"{row['label']} ({row['unit'] or '/'})"]
        for system in systems:
            entry = row["systems"].get(system, {})
            median = entry.get("median")
            bound = "≥ " if entry.get("partial") and row["metric"] == "all_waiting_s" else ""
            cells.append("–" if median is None else f"{bound}{figure(median)}")
        waiting = row["metric"] == "all_waiting_s"
        culm_partial = waiting and row["systems"].get("culm", {}).get("partial")
        for peer in peers:
            entry = row["systems"].get(peer, {})
            if culm_partial and entry.get("partial"):  # two lower bounds: no ratio
                cells.append("? (both ≥)")
                continue
            cells.append(
                f"{'≥ ' if culm_partial else '≤ ' if waiting and entry.get('partial') else ''}"
                f"{entry['ratio']:.2f} ({entry['ratio_min']:.2f}–{entry['ratio_max']:.2f})"
                if "ratio" in entry
                else "–"
            )
        target = row.get("target")
        cells.append(
            f"{target['op']} {target['bound']}: {'met' if target['met'] else 'MISS'}"
            if target
            else ""
        )
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
