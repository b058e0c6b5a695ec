"""The fit watcher: a running consumer picks up a fit made elsewhere without a restart.

Several consumers share one store (a DuckLake); `sysmon-blt fit` against it, or another
instance ending its learning period, stores a new fit version there. This stage, placed before
the score stages, asks the store every ``every_s`` seconds for each watched model's latest fit
version (one small query per model, on the thread that runs the stages) and, when one is newer
than the version its score stage scores with, has ``switch`` load it and swap the score and
incident stages. The swap happens before the batch at hand is scored, so a batch is scored
wholly with one fit and its assignments record the version they used.

Between polls a batch costs a clock read. A poll that fails (the catalog briefly unreachable)
is logged and retried at the next interval: the stream keeps scoring with the fit it has.
"""

from __future__ import annotations

import time
from typing import Callable, Mapping, Sequence

import structlog

from plugin.pipeline.batch import Batch, BatchStage
from plugin.pipeline.score import ScoreStage
from plugin.store import Store

log = structlog.get_logger(__name__)

#: (model, old version, new version) of a switch, for the caller's metrics and learning period
OnSwitch = Callable[[str, int, int], None]


class FitWatcher:
    """Polls the store for newer fits of ``models`` (name -> model version) and switches the
    score stages among ``stages`` to them through ``switch``, which returns {model: (old, new)}.
    ``every_s`` <= 0 turns polling off. ``clock``: seconds, monotonic (tests inject one)."""

    def __init__(self, store: Store, stages: Sequence[BatchStage], models: Mapping[str, str],
                 switch: Callable[[], dict[str, tuple[int, int]]], *, every_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.store = store
        self.stages = stages  # read at each poll: the caller may still append stages
        self.models = dict(models)
        self.switch = switch
        self.every_s = every_s
        self.clock = clock
        self.name = "fit-watch"
        self.polls = 0
        self.picked_up = 0
        self._listeners: list[OnSwitch] = []
        # the stages were just built from the store's latest fit: the first poll can wait
        self._next = clock() + every_s

    def on_switch(self, listener: OnSwitch) -> None:
        """Call ``listener(model, old, new)`` after each switch (on the stage thread)."""
        self._listeners.append(listener)

    def __call__(self, batch: Batch) -> None:
        if self.every_s <= 0 or self.clock() < self._next:
            return
        self._next = self.clock() + self.every_s
        self.polls += 1
        try:
            if self._newer():
                self._switch()
        except Exception as exc:  # a failed poll must not stop the stream; the old fit scores
            log.warning("fit_poll_failed", error=str(exc)[:300],
                        retry_in_s=self.every_s)

    def _scoring(self) -> dict[str, int]:
        """Model -> the fit version its score stage uses now."""
        return {st.model: st.version for st in self.stages
                if isinstance(st, ScoreStage) and st.model in self.models}

    def _newer(self) -> bool:
        """Whether the store holds a fit newer than one a score stage uses."""
        for model, version in self._scoring().items():
            latest = self.store.latest_fit(model, self.models[model])
            if latest is not None and latest[0] > version:
                return True
        return False

    def _switch(self) -> None:
        for model, (old, new) in self.switch().items():
            self.picked_up += 1
            log.warning("fit_picked_up", model=model, old_version=old, new_version=new,
                        note="a fit made elsewhere (another instance, `sysmon-blt fit`): "
                             "scoring with it from this batch on")
            for listener in self._listeners:
                try:
                    listener(model, old, new)
                except Exception as exc:  # a listener (metrics) must not undo the switch
                    log.warning("fit_listener_failed", model=model, error=str(exc)[:300])

    def stats(self) -> dict:
        return {"name": self.name, "every_s": self.every_s, "polls": self.polls,
                "picked_up": self.picked_up, "scoring": self._scoring()}
