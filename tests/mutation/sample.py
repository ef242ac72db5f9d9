"""The fixed sample of mutants CI runs (``test_sample.py``): small bugs in runtime and storage
code, each with the tests that must catch it.

Each mutant replaces ``original`` (found exactly once in ``file``, under ``src/``) with
``mutated``. When the code changes so that an original is no longer found once, the test says
so: update the mutant here (same bug, new text), do not drop it. The mutants sit in code the
distributed rewrite leaves alone (the runner's ring and replay cache, the streams, the
subscriptions, the row writer, the writer thread, store health), and their tests run in seconds
on SQLite.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Mutant:
    name: str  # the bug, in words (the test's id)
    file: str  # relative to src/
    original: str
    mutated: str
    tests: tuple[str, ...]  # node ids, relative to the repository, that must fail with it


RUNNER = "culm/runtime/runner.py"
STREAMS = "culm/runtime/streams.py"
RESUME = "tests/contract/test_resume.py"
REPLAY = "tests/contract/test_replay_cache.py"

MUTANTS = (
    Mutant(
        name="ring-attaches-one-event-late",
        file=RUNNER,
        original="            if oldest > after + 1:\n",
        mutated="            if oldest > after + 2:\n",
        tests=(f"{RESUME}::test_the_ring_attaches_exactly_after_the_cursor_or_sends_to_the_store",),
    ),
    Mutant(
        name="replay-cache-holds-16-critical-events",
        file=RUNNER,
        original="CRITICAL_EVENTS_CAPACITY = 32\n",
        mutated="CRITICAL_EVENTS_CAPACITY = 16\n",
        tests=(
            f"{REPLAY}::test_a_live_runs_cache_is_the_last_32_critical_events_and_the_last_budget",
        ),
    ),
    Mutant(
        name="replay-cache-keeps-the-first-budget",
        file=RUNNER,
        original="            self.last_budget_event = event\n",
        mutated="            self.last_budget_event = self.last_budget_event or event\n",
        tests=(
            f"{REPLAY}::test_a_live_runs_cache_is_the_last_32_critical_events_and_the_last_budget",
        ),
    ),
    Mutant(
        name="finished-run-cache-reads-4-critical-events",
        file=STREAMS,
        original="sorted(CRITICAL_EVENT_TYPES), limit=32\n",
        mutated="sorted(CRITICAL_EVENT_TYPES), limit=4\n",
        tests=(f"{REPLAY}::test_a_finished_runs_cache_comes_from_the_store_with_the_same_rules",),
    ),
    Mutant(
        name="lagging-session-subscriber-skips-an-event-when-it-catches-up",
        file=STREAMS,
        original="after=seen.get(run.run_id, 0))\n",
        mutated="after=seen.get(run.run_id, 0) + 1)\n",
        tests=(
            "tests/contract/test_session_lag.py"
            "::test_a_session_subscriber_whose_queue_overflows_gets_every_event_once",
        ),
    ),
    Mutant(
        name="subscription-lags-one-event-late",
        file="culm/runtime/subscription.py",
        original="if len(self._items) >= self._maxsize:\n",
        mutated="if len(self._items) > self._maxsize:\n",
        tests=(
            "tests/runtime/test_runner.py"
            "::test_a_full_queue_marks_the_subscriber_lagged_without_blocking_others",
        ),
    ),
    Mutant(
        name="row-writer-passes-the-parameter-limit",
        file="culm/storage/rowwriter.py",
        original="_MAX_PARAMETERS = 999\n",
        mutated="_MAX_PARAMETERS = 1999\n",
        tests=(
            "tests/storage/test_rowwriter.py"
            "::test_chunks_cover_every_row_within_the_parameter_limit[1000-12]",
        ),
    ),
    Mutant(
        name="group-commit-keeps-a-failed-write",
        file="culm/storage/writer.py",
        original='                        raw.execute("ROLLBACK TO culm_write")\n',
        mutated="",
        tests=(
            "tests/storage/test_writer.py"
            "::test_writes_queued_behind_a_busy_writer_share_one_commit",
        ),
    ),
    Mutant(
        name="operational-error-is-not-a-store-failure",
        file="culm/storage/health.py",
        original="isinstance(exc, sa.exc.OperationalError | sa.exc.InterfaceError | OSError)",
        mutated="isinstance(exc, sa.exc.InterfaceError | OSError)",
        tests=(
            "tests/storage/test_health.py"
            "::test_a_failing_write_is_storage_unavailable_until_one_succeeds[sqlite]",
        ),
    ),
)
