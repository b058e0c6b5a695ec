"""The one scoring entry: texts -> content scores, then an event's score with its context, then
the explanation an analyst reads.

The score stage (events arriving in log order, the lineage carried in memory), `enrich` (one
alert, the lineage read from stored events) and the HTTP service all score through here, so the
three can never disagree on how a score is made; they differ only in where the lineage carry
comes from.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from plugin.detect.context import ContextModel, ContextScore


@dataclass
class TextScore:
    """A canonical text's content score: it depends only on the text, its vector and the fit."""

    cluster: int
    distance: float
    score: float
    is_outlier: bool
    detail: dict


@dataclass
class EventScore:
    """An event's final score: the text's content score, with the context on top after a fit."""

    score: float
    is_outlier: bool
    detail: dict  # the raw measures behind the score (stored in assignments.detail)
    context: dict | None  # the context terms, None for content-only scoring


def score_texts(scorer, vectors: np.ndarray, texts: Sequence[str]) -> list[TextScore]:
    """Content scores of distinct texts, one per row of ``vectors`` (same order as ``texts``);
    scorers that read the bytes (surprisal) get the texts too."""
    if getattr(scorer, "needs_text", False):
        res = scorer.score(vectors, list(texts))
    else:
        res = scorer.score(vectors)
    return [TextScore(int(res.cluster[i]), float(res.distance[i]), float(res.score[i]),
                      bool(res.is_outlier[i]), res.detail[i]) for i in range(len(texts))]


def event_score(ts: TextScore, context: ContextModel | None = None,
                cs: ContextScore | None = None) -> EventScore:
    """The event's score: the text's alone (no context fitted), else the context score ``cs``
    computed by ``context.combine`` (by the stream walk or from stored lineage)."""
    if context is None or cs is None:
        return EventScore(ts.score, ts.is_outlier, ts.detail, None)
    parts = cs.detail(context)
    return EventScore(cs.score, cs.score >= 1.0, {**ts.detail, **parts}, parts)


def explanation(explain: Callable[..., dict], text: str, ts: TextScore,
                ev: EventScore, lineage: list[dict], cache: dict[str, dict] | None = None,
                earlier: dict[str, dict] | None = None) -> dict:
    """Why an event stands out: the per-text part from ``explain`` (cached by text when a cache
    is given; it costs an entropy-model pass, which ``earlier``, another walk's cache, spares),
    then the event's own score and context, and its process lineage."""
    if cache is not None and text in cache:
        base = cache[text]
    else:
        before = earlier.get(text) if earlier is not None else None
        base = explain(text, ts, before) if before is not None else explain(text, ts)
        if cache is not None:
            cache[text] = base
    out = dict(base)
    if ev.context is not None:
        out.update(score=round(ev.score, 4), is_outlier=ev.is_outlier, context=ev.context)
    out["process_lineage"] = lineage
    return out
