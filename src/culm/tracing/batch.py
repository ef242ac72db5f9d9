"""The batch export of culm's own spans (:mod:`culm.tracing.light`): ended spans are appended to
a queue; a thread wakes when a batch is full or every ``OTEL_BSP_SCHEDULE_DELAY`` and sends
what is queued, in batches of ``OTEL_BSP_MAX_EXPORT_BATCH_SIZE``, through the OTLP exporter.

Ending a span never blocks and never waits on the thread: past ``OTEL_BSP_MAX_QUEUE_SIZE``
queued spans a span is dropped and counted (``dropped``; a warning the first time). The
thread is woken once per full batch, not per span. ``force_flush`` sends what is queued from
the caller's thread; ``shutdown`` stops the thread, sends the rest and shuts the exporter down.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from culm.logs import get_logger

log = get_logger(__name__)


class Exporter(Protocol):
    def export(self, spans: Sequence[Any]) -> Any: ...

    def shutdown(self) -> None: ...


@dataclass(frozen=True, slots=True)
class BatchLimits:
    """The SDK's batch span processor settings (its defaults), from ``OTEL_BSP_*``."""

    max_queue_size: int = 2048
    max_export_batch_size: int = 512
    schedule_delay_s: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str]) -> BatchLimits:
        queue = _positive(environ, "OTEL_BSP_MAX_QUEUE_SIZE", 2048)
        batch = _positive(environ, "OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)
        if batch > queue:
            log.warning("OTEL_BSP_MAX_EXPORT_BATCH_SIZE > OTEL_BSP_MAX_QUEUE_SIZE", batch=queue)
            batch = queue
        delay = _positive(environ, "OTEL_BSP_SCHEDULE_DELAY", 5000)
        return cls(queue, batch, delay / 1000)


def _positive(environ: Mapping[str, str], name: str, default: int) -> int:
    text = environ.get(name, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value <= 0:
        log.warning("not a positive integer", variable=name, value=text, default=default)
        return default
    return value


class BatchExport:
    """Queues ended spans and exports them from its own thread (started with the first span)."""

    def __init__(self, exporter: Exporter, limits: BatchLimits | None = None) -> None:
        self.exporter = exporter
        self.limits = limits or BatchLimits()
        self.dropped = 0
        self._queue: deque[Any] = deque()
        self._wake = threading.Event()
        self._sending = threading.Lock()  # one export at a time (thread, flush, shutdown)
        self._thread: threading.Thread | None = None
        self._start = threading.Lock()
        self._closed = False

    def on_end(self, span: Any) -> None:
        """A span ended (on the caller's thread: a length check and an append)."""
        queue = self._queue
        size = len(queue)
        if size >= self.limits.max_queue_size or self._closed:
            self._drop()
            return
        queue.append(span)
        if self._thread is None:
            self._start_thread()
        if size + 1 == self.limits.max_export_batch_size:
            self._wake.set()

    def _drop(self) -> None:
        if not self.dropped:
            log.warning(
                "span export queue full (OTEL_BSP_MAX_QUEUE_SIZE) or shut down: dropping spans",
                max_queue_size=self.limits.max_queue_size,
            )
        self.dropped += 1

    def _start_thread(self) -> None:
        with self._start:
            if self._thread is None and not self._closed:
                self._thread = threading.Thread(
                    target=self._work, name="culm-span-export", daemon=True
                )
                self._thread.start()

    def _work(self) -> None:
        while not self._closed:
            self._wake.wait(self.limits.schedule_delay_s)
            self._wake.clear()
            self._send()

    def _send(self) -> None:
        """Export everything queued now, a batch at a time."""
        queue, size = self._queue, self.limits.max_export_batch_size
        with self._sending:
            while queue:
                batch = [queue.popleft() for _ in range(min(size, len(queue)))]
                try:
                    self.exporter.export(batch)
                except Exception:  # an exporter bug must not stop the thread
                    log.exception("span export failed", spans=len(batch))

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        """Send what is queued (blocking: not on the event loop)."""
        self._send()
        return True

    def shutdown(self) -> None:
        """Stop the thread, send what is left, shut the exporter down."""
        with self._start:
            self._closed = True
            thread = self._thread
        self._wake.set()
        if thread is not None:
            thread.join()
        self._send()
        self.exporter.shutdown()
        if self.dropped:
            log.warning("spans dropped (OTEL_BSP_MAX_QUEUE_SIZE)", dropped=self.dropped)
