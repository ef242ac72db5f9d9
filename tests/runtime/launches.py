"""A dispatcher's ``launch`` and ``active`` for the dispatcher tests."""

from __future__ import annotations

from collections.abc import Collection

from culm.domain.models import Run


class Launches:
    """Records the runs launched (``launched``; their ids: ``ids``), raises for the ids in
    ``failing``; ``others`` stands for runs started here meanwhile (sub-agents)."""

    def __init__(self, failing: Collection[str] = ()) -> None:
        self.failing = set(failing)
        self.launched: list[Run] = []
        self.others = 0

    def launch(self, run: Run) -> None:
        if run.run_id in self.failing:
            raise RuntimeError("no task for it")
        self.launched.append(run)

    @property
    def ids(self) -> list[str]:
        return [run.run_id for run in self.launched]

    def active(self) -> int:
        return len(self.launched) + self.others
