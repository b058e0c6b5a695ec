"""Context for a score: which binaries the baseline never ran, and what the event's process tree did.

A content score (window surprisal, kNN) judges one event's text. Two things an analyst weighs are
not in that text alone:

- **prevalence**: an executable or module path that no baseline event names (the classic
  least-frequency-of-occurrence hunt for first-seen binaries);
- **lineage**: the event belongs to a process whose creation, or an ancestor's, was suspicious.
  Much of an attack's activity looks ordinary (the payload's ``conhost.exe`` loading
  ``kernel32.dll``, a monitor opening the payload's process): its text has a twin in every
  baseline, and only its process tree sets it apart.

Per event, in arrival order (Sysmon logs a parent's creation before its children's events)::

    own   = content + novelty_weight * (1 if an image path is unseen in the baseline else 0)
    carry = max(own of the process's creation, carry of its parent)       # per ProcessGuid
    raw   = own + lineage_weight * max(carry(actor), carry(target))
    score = raw / threshold

Calibration keeps ``score >= 1.0`` meaning "past the ``quantile`` of ordinary traffic": the
threshold is that quantile of ``raw`` over the baseline's own events, walked the same way, with
novelty counted leave-one-group-out (a path is new to a baseline event when only its own host, or
input, ever named it). Otherwise a baseline would never see a new path, and every new host's own
software would cross the threshold.

The weights (1.0, 0.5) were chosen by the LSASS leave-one-capture-out evaluation (README, with
the neighbouring values).

Without a fit there is no baseline to say which paths are new, so the cold start learns it from
the case itself (`CaseContext`): the same formula, with "never seen" meaning "a process creation
whose image no earlier event of this case named", once the case has shown its routine.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np
import orjson

from plugin.detect.calibration import THRESHOLD_FLOOR, StreamingQuantile
from plugin.detect.lineage import guid
from plugin.memory import LRU

NOVELTY_WEIGHT = 1.0
LINEAGE_WEIGHT = 0.5
MAX_PROCESSES = 500_000
MAX_PATHS_SHOWN = 5
MAX_CACHED_TEXTS = 200_000  # texts whose never-seen paths are kept
MAX_CASE_PATHS = 1_000_000  # paths a case remembers having seen (least recently named out)
MAX_CASE_HOSTS = 100_000  # hosts whose event counts a case keeps
PATHS_CACHED_TEXTS = 16_384  # texts whose image paths are kept (`image_paths`)

#: canonical-text keys whose values are executable or module paths
IMAGE_KEYS = ("image", "parentimage", "sourceimage", "targetimage", "imageloaded")
_IMAGE_VALUE = re.compile(r"(?:^| )(?:" + "|".join(IMAGE_KEYS) + r")=(.*?)(?= [a-z0-9_]+=|$)")
#: the acting process's own image (``image=...``), not its parent's, target's or a module
_OWN_IMAGE = re.compile(r"(?:^| )image=(.*?)(?= [a-z0-9_]+=|$)")


@lru_cache(maxsize=PATHS_CACHED_TEXTS)
def image_paths(text: str) -> frozenset[str]:
    """The image and module paths a canonical text names (``image=...``, ``imageloaded=...``).
    Cached by text: a case walks each event's text and a few thousand texts recur hundreds of
    times (the regex was a fifth of the context walk's time on otrf/compound)."""
    return frozenset(v for v in _IMAGE_VALUE.findall(text) if v and v != "-")


def own_image(text: str) -> str | None:
    """The acting process's own image path in a canonical text, None when it names none."""
    m = _OWN_IMAGE.search(text)
    return m.group(1) if m and m.group(1) and m.group(1) != "-" else None


@dataclass
class ContextModel:
    """What a fit learned for the context terms: the baseline's paths and the threshold."""

    images: frozenset[str]
    threshold: float
    novelty_weight: float = NOVELTY_WEIGHT
    lineage_weight: float = LINEAGE_WEIGHT
    quantile: float = 0.99
    calibration: str = ""
    # text -> its never-seen paths: the score stage and the incident stage share this model and
    # ask for the same texts, so each text's paths are extracted once
    _novel: dict[str, list[str]] = field(default_factory=dict, init=False, repr=False,
                                         compare=False)

    def to_params(self) -> dict:
        return {"images": sorted(self.images), "threshold": self.threshold,
                "novelty_weight": self.novelty_weight, "lineage_weight": self.lineage_weight,
                "quantile": self.quantile, "calibration": self.calibration}

    @classmethod
    def from_params(cls, p: dict) -> "ContextModel":
        return cls(frozenset(p.get("images", ())), float(p["threshold"]),
                   float(p.get("novelty_weight", NOVELTY_WEIGHT)),
                   float(p.get("lineage_weight", LINEAGE_WEIGHT)),
                   float(p.get("quantile", 0.99)), str(p.get("calibration", "")))

    def novel(self, text: str) -> list[str]:
        """The image and module paths of ``text`` the baseline never saw (cached by text)."""
        hit = self._novel.get(text)
        if hit is None:
            if len(self._novel) > MAX_CACHED_TEXTS:
                self._novel.clear()
            hit = self._novel[text] = sorted(p for p in image_paths(text) if p not in self.images)
        return hit

    def own(self, content: float, novel: Sequence[str]) -> float:
        """An event's own suspicion: its content score, plus the prevalence term."""
        return content + (self.novelty_weight if novel else 0.0)

    def combine(self, content: float, novel: list[str], carry: float) -> "ContextScore":
        """The calibrated score from the content score, the unseen paths and the lineage carry:
        the one formula for the stream walk, enrichment and calibration alike."""
        raw = self.own(content, novel) + self.lineage_weight * carry
        return ContextScore(raw / self.threshold, raw, content, novel, carry)


_PROCESS_KEYS = frozenset({"processguid", "parentprocessguid", "sourceprocessguid",
                           "targetprocessguid"})


#: what the context walk and incident grouping read of an event's fields (lower case)
PROCESS_VIEW_KEYS = _PROCESS_KEYS | {"image", "sourceimage"}


def _lower(fields: dict) -> dict:
    return {str(k).lower(): v for k, v in fields.items()}


def _picked(fields: object, keys: frozenset[str]) -> dict:
    """The entries of ``fields`` whose lower-cased key is one of ``keys``, under that key; {}
    when ``fields`` is not an object."""
    if not isinstance(fields, dict):
        return {}
    return {low: v for k, v in fields.items() if (low := str(k).lower()) in keys}


def process_fields(fields: dict) -> dict:
    """Only the process GUIDs of an event's fields (lower-case keys): all the walk needs, and
    little to hold for every event of a baseline."""
    return _picked(fields, _PROCESS_KEYS)


def process_view(views: dict[str, dict], key: str, fields_json: str) -> dict:
    """The event ``key``'s fields JSON reduced to `PROCESS_VIEW_KEYS` ({} when absent,
    unreadable or not an object: the event is still scored, on its content, and joins no
    incident), parsed once per batch into ``views`` for every stage that walks process trees:
    the score and incident stages each parsed every event's whole fields (~860 bytes)."""
    view = views.get(key)
    if view is None:
        try:
            fields = orjson.loads(fields_json) if fields_json else {}
        except orjson.JSONDecodeError:
            fields = {}
        view = views[key] = _picked(fields, PROCESS_VIEW_KEYS)
    return view


class ProcessCarry:
    """The suspicion each process carries, by ProcessGuid, in arrival order; bounded in memory
    (oldest first out), so a long-running consumer does not grow without end."""

    def __init__(self, max_entries: int = MAX_PROCESSES) -> None:
        self._carry: dict[str, float] = {}
        self.max_entries = max_entries

    def step(self, event_id: int, fields: dict, own: float) -> float:
        """This event's lineage context (before its own contribution); records a creation."""
        low = _lower(fields)
        if event_id == 1:
            inherited = self._carry.get(guid(low.get("parentprocessguid")) or "", 0.0)
            g = guid(low.get("processguid"))
            if g is not None:
                if g not in self._carry and len(self._carry) >= self.max_entries:
                    self._carry.pop(next(iter(self._carry)))
                self._carry[g] = max(own, inherited)
            return inherited
        actor = guid(low.get("processguid") or low.get("sourceprocessguid"))
        target = guid(low.get("targetprocessguid"))
        return max(self._carry.get(actor or "", 0.0), self._carry.get(target or "", 0.0))


@dataclass
class ContextScore:
    score: float
    raw: float
    content: float
    novel_images: list[str] = field(default_factory=list)
    lineage: float = 0.0

    def detail(self, model: ContextModel) -> dict:
        return {"context_score": round(self.score, 4), "content_score": round(self.content, 4),
                "novel_images": self.novel_images[:MAX_PATHS_SHOWN],
                "lineage_context": round(self.lineage, 4),
                "context_threshold": round(model.threshold, 4),
                "novelty_weight": model.novelty_weight, "lineage_weight": model.lineage_weight}


class ContextScorer:
    """Scores events one by one in arrival order on top of their texts' content scores."""

    def __init__(self, model: ContextModel, max_processes: int = MAX_PROCESSES) -> None:
        self.model = model
        self.carry = ProcessCarry(max_processes)

    def novel(self, text: str) -> list[str]:
        return self.model.novel(text)

    def score(self, event_id: int, fields: dict, text: str, content: float) -> ContextScore:
        novel = self.novel(text)
        carry = self.carry.step(event_id, fields, self.model.own(content, novel))
        return self.model.combine(content, novel, carry)


class CaseContext:
    """The context terms of a run without a fit, learned from the case without trusting it.

    A first import of a case, or a consumer's first events, has no baseline, yet the two terms
    that lift an attack's quiet events above the host's noise need none to work: a binary this
    case had not run before, and the suspicion its process tree carries. So, per event in arrival
    order, the fitted formula (module docstring) with two changes:

    - **never seen** means a process creation (event 1) whose own image no earlier event of this
      case named (as actor, parent, target or module, on any host), counted once the event's
      host has shown ``min_events`` events: before that everything the host runs is new to the
      case, its routine still arriving. A case of many small captures (one per technique, one
      host each) therefore gets no novelty term, only the lineage; a capture per host of a
      day's logs gets both. What the case names is remembered least recently named first out,
      so a path in daily use never ages out;
    - **the threshold** is the ``quantile`` of this case's own raw scores so far (a streaming
      histogram), and at least 1.0, the content score's own bar: a quiet case keeps the content
      threshold, a noisy one flags about ``1 - quantile`` of its events. The context's scores
      count once the case calibration is warm (before, the shipped threshold's content scores
      are too loose to carry down a tree); until ``min_events`` of them are observed the
      threshold is 1.0 and the context only adds outliers, at ``bar``, to the content's own.

    The content score is the case-calibrated one (`plugin.detect.calibration.CaseCalibration`).
    The weights are the fitted context's (chosen by the LSASS evaluation): nothing here was
    tuned on its own.
    """

    HIGH = 32.0  # raw scores are clipped here in the histogram (a content score of 30 is rare)
    BINS = 6400

    def __init__(self, min_events: int = 1000, quantile: float = 0.99, bar: float = 2.0,
                 novelty_weight: float = NOVELTY_WEIGHT, lineage_weight: float = LINEAGE_WEIGHT,
                 max_paths: int = MAX_CASE_PATHS, max_processes: int = MAX_PROCESSES) -> None:
        self.min_events = min_events
        self.bar = bar
        self.quantile = quantile
        self.novelty_weight = novelty_weight
        self.lineage_weight = lineage_weight
        self.events = 0
        self.novel_creations = 0
        self._seen: LRU[str, None] = LRU(max_paths)
        self._host_events: LRU[str, int] = LRU(MAX_CASE_HOSTS)
        self._carry = ProcessCarry(max_processes)
        self._raw = StreamingQuantile(self.HIGH, self.BINS)

    def walk(self, computer: str | None, event_id: int, fields: dict, text: str,
             content: float) -> tuple[float, list[str], float]:
        """This event's raw score, its never-seen image (a list of at most one) and its lineage
        carry; the case remembers the event's paths and its process's suspicion."""
        novel: list[str] = []
        host = (computer or "").lower()
        seen_on_host = self._host_events.get(host, 0)
        self._host_events[host] = seen_on_host + 1
        if event_id == 1 and seen_on_host >= self.min_events:
            image = own_image(text)
            if image is not None and image not in self._seen:
                novel = [image]
                self.novel_creations += 1
        for path in image_paths(text):
            self._seen[path] = None
        self.events += 1
        own = content + (self.novelty_weight if novel else 0.0)
        carry = self._carry.step(event_id, fields, own)
        return own + self.lineage_weight * carry, novel, carry

    def observe(self, raws: np.ndarray) -> None:
        """Add a batch's raw scores to the case's quantile (before they are judged, so a first
        batch calibrates itself)."""
        self._raw.observe(raws)

    def settled(self) -> CaseContext:
        """The same context for a second pass over the same case: the walk (paths named, the
        process trees' carries) starts again, the threshold is the whole case's quantile of the
        first pass's raw scores, fixed (`plugin.pipeline.settle`)."""
        out = CaseContext(self.min_events, self.quantile, self.bar, self.novelty_weight,
                          self.lineage_weight, self._seen.max_entries, self._carry.max_entries)
        out._raw = self._raw.frozen_copy()
        return out

    @property
    def warm(self) -> bool:
        return self._raw.n >= self.min_events

    def threshold(self) -> float:
        """1.0 until ``min_events`` raw scores are observed (a quantile of a handful of events
        is their maximum: each small batch would make its own strangest event the bar), then
        the higher of 1.0 and the case's quantile."""
        return max(1.0, self._raw.quantile(self.quantile)) if self.warm else 1.0

    def outlier_bar(self) -> float:
        """The score an outlier needs: 1.0 once the quantile is trusted, ``bar`` before (as the
        case calibration's)."""
        return 1.0 if self.warm else self.bar

    def detail(self, raw: float, content: float, novel: list[str], carry: float,
               threshold: float) -> dict:
        return {"context_score": round(raw / threshold, 4), "content_score": round(content, 4),
                "novel_images": novel, "novel_in": "case", "lineage_context": round(carry, 4),
                "context_threshold": round(threshold, 4),
                "novelty_weight": self.novelty_weight, "lineage_weight": self.lineage_weight}

    def describe(self) -> dict:
        return {"context": "case" if self.warm else "case (not yet calibrated)",
                "context_quantile": self.quantile,
                "context_threshold": round(self.threshold(), 4),
                "novel_creations": self.novel_creations}


def calibration_groups(computers: Sequence[str | None], sources: Sequence[str]) -> tuple[list, str]:
    """Groups for leave-one-group-out novelty: hosts when the baseline spans several, else
    inputs, else the last fifth of the baseline in time against the rest."""
    if len({c for c in computers if c}) >= 2:
        return [c or "" for c in computers], "computer"
    if len(set(sources)) >= 2:
        return list(sources), "source"
    n = len(sources)
    cut = int(n * 0.8)
    return [0 if i < cut else 1 for i in range(n)], "time"


def fit_context(event_ids: Sequence[int], fields: Sequence[dict], texts: Sequence[str],
                groups: Sequence, content: np.ndarray, quantile: float = 0.99,
                novelty_weight: float = NOVELTY_WEIGHT, lineage_weight: float = LINEAGE_WEIGHT,
                calibration: str = "") -> ContextModel:
    """Learn the baseline's image paths and the threshold from its events in arrival order.

    ``content`` is each event's calibrated content score (1.0 = the content scorer's own
    threshold). Novelty during calibration is leave-one-group-out (see the module docstring).
    """
    n = len(texts)
    if not (len(event_ids) == len(fields) == len(groups) == len(content) == n):
        raise ValueError("fit_context: event_ids, fields, texts, groups and content differ in length")
    paths_of: dict[str, set[str]] = {}
    owners: dict[str, set] = {}
    for t, gr in zip(texts, groups):
        ps = paths_of.get(t)
        if ps is None:
            ps = paths_of[t] = image_paths(t)
        for p in ps:
            owners.setdefault(p, set()).add(gr)
    carry = ProcessCarry(max(MAX_PROCESSES, n))
    raw = np.empty(n, dtype=np.float64)
    for i in range(n):
        novel = any(len(owners[p]) == 1 for p in paths_of[texts[i]])
        own = float(content[i]) + (novelty_weight if novel else 0.0)
        raw[i] = own + lineage_weight * carry.step(int(event_ids[i]), fields[i], own)
    threshold = float(np.quantile(raw, quantile)) if n else THRESHOLD_FLOOR
    return ContextModel(frozenset(owners), max(threshold, THRESHOLD_FLOOR), novelty_weight,
                        lineage_weight, quantile, calibration)


def score_events(model: ContextModel, event_ids: Iterable[int], fields: Iterable[dict],
                 texts: Iterable[str], content: np.ndarray) -> np.ndarray:
    """Context scores of events in arrival order (a fresh process state)."""
    sc = ContextScorer(model)
    return np.array([sc.score(int(e), f, t, float(c)).score
                     for e, f, t, c in zip(event_ids, fields, texts, content)], dtype=np.float64)
