"""The forward proxy's taps with and without message content capture: CPU per streamed answer.

Each sample is a fresh process that passes ``--requests`` streamed answers of ``--tokens`` token
events (Chat Completions with the usage chunk, and Anthropic Messages) through the proxy's tap,
cut into 512-byte reads, as :class:`~culm.proxy.forward.Exchange` does, and reports the CPU
time per answer. Modes:

- ``base``: another checkout's culm (``--base-src``, e.g. main's ``src``): the tap as it was;
- ``off``: this tree, capture off (the tap has no content recorder: culm's default);
- ``capture``: this tree, a content recorder on the tap and the output serialized at the end
  (what a recording span with capture on costs on top of ``off``).

The modes are interleaved ``--repeat`` times (the machine may be loaded: read the ratios of
medians).

    .venv/bin/python bench/proxy_content.py --base-src /work/main/src
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

MODES = ("base", "off", "capture")
READ = 512


def _chat_stream(tokens: int) -> bytes:
    def chunk(delta: dict[str, Any], finish: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        event = {"id": "c", "object": "chat.completion.chunk", "model": "gpt-4o", "usage": None}
        return "data: " + json.dumps({**event, "choices": [choice]}) + "\n\n"

    usage = {"prompt_tokens": 10, "completion_tokens": tokens, "total_tokens": tokens + 10}
    parts = [chunk({"role": "assistant", "content": ""})]
    parts += [chunk({"content": f" word{i}"}) for i in range(tokens)]
    parts.append(chunk({}, "stop"))
    parts.append("data: " + json.dumps({"id": "c", "choices": [], "usage": usage}) + "\n\n")
    parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


def _messages_stream(tokens: int) -> bytes:
    def event(payload: dict[str, Any]) -> str:
        return f"event: {payload['type']}\ndata: {json.dumps(payload)}\n\n"

    start = {"id": "m", "type": "message", "role": "assistant", "content": [], "model": "claude"}
    start["usage"] = {"input_tokens": 10, "output_tokens": 1}
    parts = [event({"type": "message_start", "message": start})]
    block = {"type": "text", "text": ""}
    parts.append(event({"type": "content_block_start", "index": 0, "content_block": block}))
    for i in range(tokens):
        delta = {"type": "text_delta", "text": f" word{i}"}
        parts.append(event({"type": "content_block_delta", "index": 0, "delta": delta}))
    parts.append(event({"type": "content_block_stop", "index": 0}))
    end = {"type": "message_delta", "delta": {"stop_reason": "end_turn"}}
    parts.append(event({**end, "usage": {"output_tokens": tokens}}))
    parts.append(event({"type": "message_stop"}))
    return "".join(parts).encode()


def child(mode: str, requests: int, tokens: int) -> dict[str, float]:
    from culm.proxy.taps import stream_tap

    streams = {"chat": _chat_stream(tokens), "messages": _messages_stream(tokens)}
    results = {}
    for wire_format, data in streams.items():
        reads = [data[i : i + READ] for i in range(0, len(data), READ)]
        started = time.process_time()
        for _ in range(requests):
            tap = stream_tap(wire_format, hide_usage_chunk=wire_format == "chat")  # type: ignore[arg-type]
            if mode == "capture":
                from culm.tracing.wire_content import output_recorder

                tap.content = output_recorder(wire_format)
            for read in reads:
                tap.feed(read)
            tap.close()
            assert tap.usage is not None
            if mode == "capture":
                assert tap.content is not None and tap.content.output()
        results[wire_format] = (time.process_time() - started) / requests * 1e6
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--base-src", type=Path, required=True, help="the base checkout's src")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--child", choices=MODES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.requests, args.tokens)))
        return
    own_src = Path(__file__).resolve().parent.parent / "src"
    samples: dict[str, dict[str, list[float]]] = {m: {"chat": [], "messages": []} for m in MODES}
    for _ in range(args.repeat):
        for mode in MODES:
            src = args.base_src if mode == "base" else own_src
            env = {**os.environ, "PYTHONPATH": str(src)}
            command = [sys.executable, __file__, "--child", mode, "--base-src", str(src)]
            command += ["--requests", str(args.requests), "--tokens", str(args.tokens)]
            out = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
            for wire_format, value in json.loads(out.stdout).items():
                samples[mode][wire_format].append(value)
    print(f"CPU µs per streamed answer of {args.tokens} tokens (medians of {args.repeat}):")
    for wire_format in ("chat", "messages"):
        medians = {m: statistics.median(samples[m][wire_format]) for m in MODES}
        runs = {m: ", ".join(f"{v:.0f}" for v in samples[m][wire_format]) for m in MODES}
        for mode in MODES:
            print(f"  {wire_format:9} {mode:8} {medians[mode]:8.0f}   ({runs[mode]})")
        print(
            f"  {wire_format:9} off/base {medians['off'] / medians['base']:.3f}"
            f"   capture/off {medians['capture'] / medians['off']:.3f}"
        )


if __name__ == "__main__":
    main()
