"""Settling a cold start on the whole case: the thresholds of an import without a fit, taken
from every event of the case instead of the events seen so far.

Why: without a fit, the score stage calibrates on the case as it streams
(`plugin.detect.calibration.CaseCalibration`, `plugin.detect.context.CaseContext`). A consumer
has no end and must; an import does end, and then its early events were judged against a bar
learned from a few thousand events (and, before 1,000 of them, only at the 2.0 bar), while the
examiner reads the case as a whole. So, once an import without a fit has stored the case, it
walks the case a second time in the same order (`rescore`: the same flow and stages, vectors
read back, no model pass) with both thresholds fixed at the whole case's quantiles that the
first walk ended with. Outliers, alerts and incidents are formed again from those scores.

Measured on the four LSASS captures, each imported alone (`python benchmarks/cold_start.py`):
mean ROC-AUC 0.964 -> 0.981, TPR at 1% FPR 0.373 -> 0.540, ordinary events flagged 0.40% ->
0.43%. Nothing becomes "normal" by it: no fit is written, and the next import of the same store
settles again over everything stored.
"""

from __future__ import annotations

from typing import Callable, Sequence

import structlog

from plugin.pipeline.batch import BatchStage
from plugin.pipeline.embed import EmbedStage
from plugin.pipeline.rescore import rescore
from plugin.pipeline.score import ScoreStage
from plugin.store import Store

log = structlog.get_logger(__name__)


def needs_settling(walked: Sequence[BatchStage]) -> bool:
    """Whether a stage scored with a case calibration that learned enough to trust."""
    return any(isinstance(s, ScoreStage) and s.case is not None and s.case.warm for s in walked)


def _warm_embeds(stages: list[BatchStage], walked: Sequence[BatchStage]) -> list[BatchStage]:
    """``stages`` with the import's own embedding stages in place of new ones: their caches
    hold the case's vectors already, where new ones read every vector back from the store and
    held a second copy beside them (two caches of up to 200,000 texts a model)."""
    warm = {s.name: s for s in walked if isinstance(s, EmbedStage)}
    return [warm.get(s.name, s) if isinstance(s, EmbedStage) else s for s in stages]


def _model_of(stage: BatchStage) -> str | None:
    """The model a stage embeds or scores for (None: a stage of every model)."""
    if isinstance(stage, EmbedStage):
        return stage.embedder.name
    return getattr(stage, "model", None)


def settle_case(store: Store, walked: Sequence[BatchStage],
                make_stages: Callable[[], list[BatchStage]], *, whole_case: bool,
                drop_unconfirmed: bool = False, batch_size: int = 5000) -> dict | None:
    """Rescore the store's events with the whole case's thresholds; None when nothing scored
    with a case calibration (a fit exists, `cold_start: shipped`, or too few events).

    ``walked``: the stages that just imported. ``whole_case``: they saw every stored event (the
    store was empty before the import); otherwise a first rescore walks the whole store to
    learn the case's thresholds, since the import saw only its own part of the case.
    ``drop_unconfirmed``: the first walk's alerts were opened by this very run and nobody has
    seen them, so those the second walk does not confirm are deleted (an import into an empty
    store), instead of staying at a count of 0 as a rescore leaves them.

    Only the models that settle walk again: one without a case calibration (the shadow on its
    shipped clusters, a model with a fit) scores the same on both walks, and rewriting its
    identical rows was half of the second walk's writes."""
    if not needs_settling(walked):
        return None
    first = list(walked)
    learned = None
    if not whole_case:
        first = _warm_embeds(make_stages(), walked)
        learned = rescore(store, first, batch_size=batch_size)
    all_second = _warm_embeds(make_stages(), walked)
    by_name = {s.name: s for s in first if isinstance(s, ScoreStage)}
    settled = {s.model for s in all_second if isinstance(s, ScoreStage) and s.name in by_name
               and s.settle_on(by_name[s.name])}
    if not settled:
        return None
    second = [s for s in all_second if _model_of(s) in settled or _model_of(s) is None]
    res = rescore(store, second, batch_size=batch_size)
    # a model that did not settle keeps the first walk's figures (and rows)
    walked_first = {getattr(s, "name", None): s for s in first}
    res["stages"] = [(s if s in second else walked_first.get(s.name, s)).stats()
                     for s in all_second if hasattr(s, "stats")]
    res["alerts_dropped"] = (store.drop_unconfirmed_alerts(
        [s.model for s in second if isinstance(s, ScoreStage) and s.alerts])
        if drop_unconfirmed else 0)
    res["outliers"] = sum(s.outliers for s in second
                          if isinstance(s, ScoreStage) and s.alerts)
    if learned is not None:
        res["seconds"] = round(res["seconds"] + learned["seconds"], 2)
    log.info("case_settled", events=res["events"], seconds=res["seconds"], outliers=res["outliers"],
             alerts_dropped=res["alerts_dropped"], passes=1 if learned is None else 2)
    return res
