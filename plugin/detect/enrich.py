"""Alert enrichment: an alert in any supported shape -> the same JSON plus a `sysmon_blt` block.

The block: model, model_version, cluster, score, is_outlier, explanation (nearest cluster and
medoid, score against threshold, surprising spans, process lineage) and the 5 nearest stored
events by cosine similarity (event_key, computer, ts, similarity, normalized). The alert is
normalized and embedded as an imported event is, and scored through the same entry
(`plugin.detect.scoring`); its lineage carry comes from the stored scores of its process's and
ancestors' creations instead of an in-memory walk.

Speed, without changing an answer (issue 15: `POST /enrich` under 8 concurrent clients on 2
cores). A profile of one request showed its time in the model pass and in scans the store ran
per request (cosine over every stored vector, JSON extraction over every process creation, a
join for the nearest baseline texts), all behind one lock. So the enricher keeps in memory what
a request would otherwise recompute or rescan:

* per canonical text (alerts repeat texts): its vector and per-byte surprisal from a pass of the
  model over that text alone (the numbers the next such pass would give: inference is
  deterministic), its content score and the per-text part of its explanation, and its
  neighbours while the store stays as it was;
* the model's stored vectors as one matrix, which shortlists the texts holding the nearest
  ones; the store then computes the similarities and picks the neighbours among the shortlist
  exactly as it would among all texts (`Store.nearest_events` with ``candidates``);
* the stored process creations by GUID, and the fit's baseline texts by hash.

These copies follow the store: one cheap query before each request (`Store.enrich_state`)
says whether rows were added (read and appended) or deleted (all read again), so
`consume --serve` answers with what the consumer has just written, and a retention prune is
seen at once.

Concurrency: the service calls `Enricher.enrich` from several threads at once. Each thread
reads the store on a connection of its own (`Store.for_thread`) and embeds with its own shallow
copy of the embedder (the weights are shared; `last_surprisal`, the per-call state that lets the
scorer and the explanation reuse the embedding pass's surprisal, is not); the shared copies are
replaced whole or changed under locks, never half-written where a reader looks.
"""

from __future__ import annotations

import copy
import itertools
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import structlog

from plugin.detect.lineage import guid
from plugin.detect.lineage import lineage as walk_lineage
from plugin.detect.scoring import TextScore, event_score, explanation, score_texts
from plugin.memory import LRU, release_freed_heap
from plugin.normalize.shapes import BadRecord, map_document, parse_and_map
from plugin.normalize.schema import SchemaSet
from plugin.normalize.text import CanonicalText
from plugin.store import AlertNotFound, Store
from plugin.store.events import Appended, EnrichState

log = structlog.get_logger(__name__)

#: neighbours returned per alert (the contract: up to 5)
NEIGHBORS = 5


def _process(store: Store, g: str | None) -> dict | None:
    """A stored process creation in the shape `plugin.detect.lineage.lineage` walks."""
    if not g:
        return None
    return _walkable(g, store.process_creation(g))


def _walkable(g: str, p: dict | None) -> dict | None:
    if p is None:
        return None
    return {"process_guid": g, "event_key": p["event_key"],
            "ts": p["ts"].isoformat() if p["ts"] else None, "image": p["image"],
            "command_line": p["command_line"], "parent_guid": guid(p["parent"])}


def alert_document(raw: str, alert_id: str,
                   incident_ids: list[str] | None = None) -> dict[str, Any]:
    """A stored alert as it goes out (alerts topic, `enrich {"alert_id": ...}`): its original
    event (the JSON object, or {"raw": ...} for event XML) with `alert_id`, `kind`, and the
    `incident_ids` its events belong to (`sysmon-blt incidents`; empty when none)."""
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        doc = None
    return {**(doc if isinstance(doc, dict) else {"raw": raw}), "alert_id": alert_id,
            "kind": "alert", "incident_ids": list(incident_ids or [])}


def lineage(store: Store, fields: dict) -> list[dict]:
    """Ancestors by ParentProcessGuid, as far as the stored process-creation events reach."""
    return walk_lineage(fields, lambda g: _process(store, g))


class ThreadEmbedder:
    """The embedder as the calling thread sees it: shared weights, its own `last_surprisal`.

    `embed` leaves the surprisal of its pass in ``last_surprisal`` for the scorer and the
    explanation to reuse. Requests on several threads (and, in `consume --serve`, the consumer,
    whose worker pool writes that attribute on the shared embedder) would overwrite each
    other's; a shallow copy per thread keeps it apart. Modules at inference are read-only, so
    the copies may run them at once."""

    def __init__(self, embedder) -> None:
        self._base = embedder
        self._local = threading.local()

    def mine(self) -> Any:
        """This thread's copy."""
        own = getattr(self._local, "embedder", None)
        if own is None:
            own = copy.copy(self._base)
            own.last_surprisal = {}
            # a heap trim after every one-text batch cost more than the pass itself (measured:
            # 14 ms a pass with it, 9 without) and stalls the other threads' allocations; the
            # enricher trims now and then instead (`Enricher.TRIM_EVERY`)
            own.release_heap_per_batch = False
            self._local.embedder = own
        return own

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_base", "_local"):  # copy, pickle, half-built
            raise AttributeError(name)
        return getattr(self.mine(), name)


@dataclass
class _Known:
    """What a canonical text alone decides, kept for the next alert with the same text: its
    model pass (vector, per-byte surprisal), its content score and the per-text part of its
    explanation under the loaded fit, and its neighbours as of one state of the store (computed
    for an event that is not itself stored, so that no exclusion applied). Shared by every later
    request: nobody writes into these; each field is replaced whole."""

    vector: np.ndarray
    surprisal: np.ndarray | None
    score: TextScore | None = None
    explained: tuple[int, dict] | None = None  # (`BaselineTexts.version`, explanation part)
    neighbors: tuple[int, list[dict]] | None = None  # (store generation, neighbours)


class _TextCache:
    """canonical text -> `_Known`, least recently used out (4096 texts: ~20 MB). A text asked
    for by several threads at once is computed by one of them while the others wait for it:
    alerts come in bursts of the same new text, and a model pass per copy of it was the
    largest share of CPU in such a burst."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._items: LRU[str, _Known] = LRU(max_entries)
        self._pending: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        self.hits = self.misses = 0

    def get(self, text: str, compute: Callable[[], _Known]) -> _Known:
        """The text's entry, computed by ``compute`` when no thread has it or is computing it."""
        while True:
            with self._lock:
                hit = self._items.get(text)  # a use: it moves to the back of the line
                if hit is not None:
                    self.hits += 1
                    return hit
                pending = self._pending.get(text)
                if pending is None:
                    self._pending[text] = threading.Event()
                    self.misses += 1
                    break
            pending.wait()  # then it is cached, or its computation failed and we try ourselves
        try:
            known = compute()
            with self._lock:
                self._items[text] = known
        finally:
            with self._lock:
                self._pending.pop(text).set()
        return known


class _Tracked:
    """An in-memory copy of rows of one store table, kept current by rowid: appended rows are
    read and added; when the counts say rows went away (a retention prune), all are read again
    into new containers, swapped in whole, so a reader never sees a half-read copy. Subclasses
    say what is read (`_read`) and how it is kept (`_add`)."""

    def __init__(self) -> None:
        self.rows = -1  # rows of the table (every model) the copy has seen; -1: never read
        self.last_rowid = -1
        self.lock = threading.Lock()

    def stale(self, total: int, above: int) -> bool:
        """Whether a growth count (rows, rows above our last rowid) differs from what we hold."""
        return total != self.rows or above != 0

    def refresh(self, store: Store, on_change: Callable[[bool], None]) -> None:
        """Read what the table gained (or all of it again). ``on_change(reread)`` runs when the
        copy changed, before the new row marks are kept: until it returned, other threads still
        find the copy stale and wait here, so none answers from what the hook is yet to update."""
        with self.lock:
            got = self._read(store, self.last_rowid)
            reread = not (self.rows >= 0 and self.rows + got.read == got.total)
            if reread:
                if self.rows >= 0:
                    log.info("enrich_index_reread", index=type(self).__name__,
                             rows_before=self.rows, rows_now=got.total)
                if self.last_rowid != -1:
                    got = self._read(store, -1)
                self._add(got, fresh=True)
            else:
                self._add(got, fresh=False)  # appends only
            if reread or got.read:
                on_change(reread)
            self.rows, self.last_rowid = got.total, got.last_rowid

    def _read(self, store: Store, after: int) -> Appended:
        raise NotImplementedError

    def _add(self, got: Appended, fresh: bool) -> None:
        raise NotImplementedError


class VectorIndex(_Tracked):
    """The model's stored vectors (unit rows of one float32 matrix), to shortlist the texts that
    hold a query's nearest neighbours without a scan of `text_vectors` per request.

    Appends write past the rows readers know of (into spare capacity, or a larger copy); readers
    take ``(buffer, rows, hashes)`` as one reference, so an append never changes what they see.
    Past ``max_rows`` (512 MB of 128-dim vectors) it holds none and the store scans, as before."""

    #: the shortlist keeps every text within this much cosine of the (k+1)-th best: far above
    #: the float32 rounding between this matmul and the store's own cosine (~1e-6), so the
    #: texts the store would pick are always among them
    MARGIN = 1e-4

    def __init__(self, model: str, version: str, max_rows: int = 1_000_000) -> None:
        super().__init__()
        self.model, self.version, self.max_rows = model, version, max_rows
        self._view: tuple[np.ndarray, int, list[str]] = (np.zeros((0, 0), np.float32), 0, [])
        self.overflow = False

    def _read(self, store: Store, after: int) -> Appended:
        return store.text_vectors_after(self.model, self.version, after)

    def _add(self, got: Appended, fresh: bool) -> None:
        if fresh:
            buf, n, hashes = np.zeros((0, 0), np.float32), 0, []
        elif self.overflow:
            return
        else:
            buf, n, hashes = self._view
        m = len(got.hashes)
        if m and n + m > self.max_rows:  # too many to hold: the store scans, as before
            log.warning("enrich_vectors_not_held", rows=n + m, max_rows=self.max_rows)
            self._view, self.overflow = (np.zeros((0, 0), np.float32), 0, []), True
            return
        if m:
            v = np.asarray(got.vectors, dtype=np.float32)
            if buf.shape[0] < n + m or buf.shape[1] != v.shape[1]:
                rows = max((n + m) * 5 // 4, n + m + 1024)  # room for the appends to come
                grown = np.zeros((rows, v.shape[1]), dtype=np.float32)
                if n:
                    grown[:n] = buf[:n]
                buf = grown
            norms = np.linalg.norm(v, axis=1, keepdims=True)
            buf[n:n + m] = np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)
            hashes.extend(got.hashes)
        self._view, self.overflow = (buf, n + m, hashes), False

    def shortlist(self, vector: np.ndarray, k: int) -> list[str] | None:
        """Text hashes among which the ``k`` most similar stored texts are (all of them when
        there are few); None when the index does not hold the vectors (the store must scan)."""
        if self.overflow:
            return None
        buf, n, hashes = self._view
        if n <= k:
            return hashes[:n]
        q = np.asarray(vector, dtype=np.float32).reshape(-1)
        norm = float(np.linalg.norm(q))
        sims = buf[:n] @ (q / norm if norm > 0 else q)
        kth = np.partition(sims, n - k)[n - k]
        pick = np.flatnonzero((sims >= kth - self.MARGIN) | np.isnan(sims))
        return [hashes[i] for i in pick.tolist()]


class CreationIndex(_Tracked):
    """The stored process creations by GUID (the first stored per GUID), for lineage walks
    without a JSON scan of every creation per ancestor. Bounded: past ``max_entries`` the oldest
    go, and a GUID not held is then asked of the store."""

    def __init__(self, max_entries: int = 500_000) -> None:
        super().__init__()
        self.max_entries = max_entries
        self._by_guid: dict[str, dict] = {}
        self.complete = True

    def _read(self, store: Store, after: int) -> Appended:
        return store.creations_after(after)

    def _add(self, got: Appended, fresh: bool) -> None:
        by_guid, complete = ({}, True) if fresh else (self._by_guid, self.complete)
        for g, creation in got.creations:
            if g in by_guid:
                continue
            if len(by_guid) >= self.max_entries:
                by_guid.pop(next(iter(by_guid)))
                complete = False
            by_guid[g] = creation
        self._by_guid, self.complete = by_guid, complete

    def get(self, store: Store, g: str | None) -> dict | None:
        """The creation in the shape the lineage walk takes, or None when none is stored."""
        if not g:
            return None
        hit = self._by_guid.get(g)
        if hit is None and not self.complete:
            hit = store.process_creation(g)
        return _walkable(g, hit)


class BaselineTexts:
    """The fit's baseline texts by hash as the store holds them (the nearest baseline texts of
    an explanation), read in one join instead of one query per new text. A hash names one text,
    so only the events' coming and going matters: after a deletion all are read again (pruned
    ones are then absent, as the store would answer), after appends only the absent ones.
    ``version`` moves whenever the answer may have changed."""

    def __init__(self, hashes: Sequence[str]) -> None:
        self.hashes = list(dict.fromkeys(hashes))
        self._texts: dict[str, str] = {}
        self._absent: set[str] = set(self.hashes)
        self.version = 0

    def reload(self, store: Store, everything: bool) -> None:
        want = self.hashes if everything else sorted(self._absent)
        if not want:
            return
        texts = {} if everything else dict(self._texts)
        texts.update(store.texts_by_hash(want))
        if texts != self._texts:
            self._texts, self._absent = texts, set(self.hashes) - texts.keys()
            self.version += 1

    def __call__(self, hashes: list[str]) -> dict[str, str]:
        texts = self._texts
        return {h: texts[h] for h in hashes if h in texts}


class Enricher:
    #: model passes between two returns of freed heap to the system (`plugin.memory`): often
    #: enough that a long-running service does not keep fragments of every pass, rarely enough
    #: that the trim (milliseconds, and a stall for the other threads' allocations) stays off
    #: the requests' path
    TRIM_EVERY = 256

    @classmethod
    def for_store(cls, store: Store, embedder, model_dir: Path, schemas: SchemaSet) -> "Enricher":
        """The enricher of a store: its latest fit (or the model directory's shipped clusters,
        not recorded: the store may be read-only) and explanations over its texts."""
        from plugin.detect.explain import make_explainer
        from plugin.detect.fitting import load_scorer

        models = ThreadEmbedder(embedder)
        loaded = load_scorer(store, embedder.name, embedder.version, model_dir, record=False,
                             embedder=models)
        enricher = cls(store, CanonicalText(schemas), models, loaded, None)
        if loaded is not None:
            enricher.explain = make_explainer(loaded, models, enricher.baseline_texts)
        return enricher

    def __init__(self, store: Store, text: CanonicalText, embedder, loaded,
                 explain: Callable | None) -> None:
        self.store = store
        self.text = text
        self.embedder = (embedder if isinstance(embedder, ThreadEmbedder)
                         else ThreadEmbedder(embedder))
        self.loaded = loaded
        self.explain = explain
        self._local = threading.local()
        self._texts = _TextCache()
        self._vectors = VectorIndex(self.embedder.name, self.embedder.version)
        self._creations = CreationIndex()
        self.baseline_texts = BaselineTexts(loaded.baseline_hashes if loaded is not None else [])
        self._generations = itertools.count(1)
        self._generation = 0
        self._passes = itertools.count(1)
        self._sync(store)  # read the indexes now, not on the first request

    def use_latest_fit(self, model_dir: Path) -> int | None:
        """Score and explain with the store's latest fit from now on: a consumer that picked up
        a fit made elsewhere (`fit` on a shared lake) answers /enrich with it too. The per-text
        cache holds scores of the old fit, so it starts again; a request already running
        finishes with the fit it began with. Returns the fit version now used."""
        from plugin.detect.explain import make_explainer
        from plugin.detect.fitting import load_scorer

        store = self._store()
        loaded = load_scorer(store, self.embedder.name, self.embedder.version, model_dir,
                             record=False, embedder=self.embedder)
        baseline = BaselineTexts(loaded.baseline_hashes if loaded is not None else [])
        baseline.reload(store, everything=True)
        explain = make_explainer(loaded, self.embedder, baseline) if loaded is not None else None
        self._texts = _TextCache()
        self.loaded, self.baseline_texts, self.explain = loaded, baseline, explain
        self._next_generation()
        return loaded.version if loaded is not None else None

    def _store(self) -> Store:
        """This thread's connection to the store (a DuckDB connection serves one thread)."""
        own = getattr(self._local, "store", None)
        if own is None:
            own = self._local.store = self.store.for_thread()
        return own

    def _sync(self, store: Store, event_key: str | None = None,
              ts: datetime | None = None) -> tuple[EnrichState, int]:
        """Bring the in-memory copies up to what the store holds now; returns the store's state
        and the generation cached neighbours must carry to be used (it moves on whenever the
        events or the vectors changed)."""
        st = store.enrich_state(self._creations.last_rowid, self._vectors.last_rowid, event_key,
                                ts)
        if self._creations.stale(st.events, st.events_above):
            self._creations.refresh(store, lambda reread: self._events_changed(store, reread))
        if self._vectors.stale(st.vectors, st.vectors_above):
            self._vectors.refresh(store, lambda reread: self._next_generation())
        return st, self._generation

    def _events_changed(self, store: Store, reread: bool) -> None:
        self.baseline_texts.reload(store, everything=reread)
        self._next_generation()

    def _next_generation(self) -> None:
        self._generation = next(self._generations)  # `next` on a count is atomic

    def _known(self, canonical: str) -> _Known:
        """The text's model pass, with its surprisal left on this thread's embedder for the
        scorer and the explanation: from the cache, else from a pass over this text alone."""
        own = self.embedder.mine()
        known = self._texts.get(canonical, lambda: self._pass(own, canonical))
        own.last_surprisal = {canonical: known.surprisal} if known.surprisal is not None else {}
        return known

    def _pass(self, own, canonical: str) -> _Known:
        vec = own.embed([canonical])[0]
        sur = getattr(own, "last_surprisal", {}).get(canonical)
        for a in (vec, sur):  # shared by every later request: nobody may write into them
            if a is not None:
                a.setflags(write=False)
        if next(self._passes) % self.TRIM_EVERY == 0:
            release_freed_heap()
        return _Known(vec, sur)

    def _neighbors(self, store: Store, known: _Known, st: EnrichState, generation: int,
                   own_key: str) -> list[dict]:
        """The nearest stored events. Kept per text while the store stays as it was, unless the
        event itself is stored: its exclusion then makes the answer its own."""
        if not st.has_event and known.neighbors is not None and known.neighbors[0] == generation:
            return known.neighbors[1]
        found = store.nearest_events(
            self.embedder.name, self.embedder.version, known.vector, k=NEIGHBORS,
            exclude_event=own_key, candidates=self._vectors.shortlist(known.vector, NEIGHBORS + 1))
        if not st.has_event:
            known.neighbors = (generation, found)
        return found

    def enrich(self, doc: Any) -> dict:
        """The alert with a `sysmon_blt` block; an error block (``sysmon_blt.error``) when it
        is not a Sysmon event, or names an alert the store does not hold.

        ``{"alert_id": ...}`` enriches a stored alert: its first event as stored, with
        ``alert_id`` and ``kind`` added (the shape of an alert on the alerts topic)."""
        if not isinstance(doc, dict):
            raise BadRecord("an alert must be a JSON object")
        store = self._store()
        own_key = None
        try:
            if "alert_id" in doc and len(doc) <= 2:  # a reference, not an event
                doc, ev, own_key = self._stored_alert(store, str(doc["alert_id"]))
            else:
                ev = map_document(doc)
        except (BadRecord, AlertNotFound) as exc:
            return {**doc, "sysmon_blt": {"error": str(exc)}}
        if ev is None:
            return {**doc, "sysmon_blt": {"error": "not a Sysmon event"}}
        if own_key is None:
            own_key = ev.key(orjson.dumps(doc))
        st, generation = self._sync(store, own_key, ev.utc_time)
        canonical = self.text.build(ev)
        known = self._known(canonical)
        block: dict[str, Any] = {"model": self.embedder.name,
                                 "model_version": self.embedder.version, "normalized": canonical}

        def process(g: str | None) -> dict | None:
            return self._creations.get(store, g)

        chain = walk_lineage(ev.fields, process)
        if self.loaded is not None:
            ts = known.score
            if ts is None:
                ts = known.score = score_texts(self.loaded.scorer, known.vector[None, :],
                                               [canonical])[0]
            context = self.loaded.context
            cs = (context.combine(ts.score, context.novel(canonical),
                                  self._carry(store, process, ev, chain))
                  if context is not None else None)
            scored = event_score(ts, context, cs)
            block.update(cluster=ts.cluster, score=scored.score, is_outlier=scored.is_outlier,
                         fit_version=self.loaded.version)
            version = self.baseline_texts.version
            per_text = ({canonical: known.explained[1]} if known.explained is not None
                        and known.explained[0] == version else {})
            block["explanation"] = explanation(self.explain, canonical, ts, scored, chain,
                                               cache=per_text)
            known.explained = (version, per_text[canonical])
        else:
            block.update(cluster=None, score=None, is_outlier=None)
            block["explanation"] = {"note": "no fit and no shipped clusters: not scored",
                                    "process_lineage": chain}
        block["neighbors"] = self._neighbors(store, known, st, generation, own_key)
        return {**doc, "sysmon_blt": orjson.loads(orjson.dumps(
            block, option=orjson.OPT_SERIALIZE_NUMPY))}

    def _stored_alert(self, store: Store, alert_id: str) -> tuple[dict, Any, str]:
        """(the alert's document, its event, its event_key) from the store."""
        a = store.alert(alert_id)
        raw = a.get("raw") or ""
        doc = alert_document(raw, a["alert_id"], a.get("incident_ids"))
        ev = parse_and_map(raw) if raw else None
        if ev is None:
            raise BadRecord(f"alert {a['alert_id']}: its stored event cannot be read back")
        return doc, ev, a["event_key"]

    def _carry(self, store: Store, process: Callable[[str | None], dict | None], ev,
               chain: Sequence[dict]) -> float:
        """The lineage term as the import's walk would have carried it: the highest own score
        (content + prevalence) among the stored creations of the alert's process and ancestors."""
        context = self.loaded.context
        keys = [p["event_key"] for p in chain if p.get("event_key")]
        if ev.event_id != 1:  # the acting process's own creation carries too
            low = {str(k).lower(): v for k, v in ev.fields.items()}
            actor = process(guid(low.get("processguid") or low.get("sourceprocessguid")))
            if actor is not None:
                keys.append(actor["event_key"])
        carry = 0.0
        for d in store.assignment_details(self.embedder.name, keys):
            if "content_score" in d:
                carry = max(carry, context.own(d["content_score"], d.get("novel_images") or []))
        return carry
