"""Stages assembled from the configuration and the model directory, in one place.

Every entry point (import, rescore, eval, the Kafka consumer) gets its embed and score stages
from here, so they embed and score alike: the BLT embeds, then scores with the database's latest
fit (or the model directory's shipped reference clusters: the cold start); the Linformer shadow,
when the model directory has one and ``shadow_sample_rate`` > 0, does the same beside it and
never raises an alert.
"""

from __future__ import annotations

import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import structlog

from plugin.config import Config
from plugin.detect.calibration import CaseCalibration
from plugin.detect.explain import make_explainer
from plugin.detect.fitting import LoadedScorer, load_scorer
from plugin.detect.reference import ReferenceModelError
from plugin.detect.suppress import SuppressRules
from plugin.errors import UsageError
from plugin.models.checkpoint import ModelDirError, has_linformer
from plugin.pipeline.batch import BatchStage
from plugin.pipeline.cache import MAX_IN_MEMORY, EmbeddingCache
from plugin.pipeline.embed import EmbedStage
from plugin.pipeline.fitwatch import FitWatcher
from plugin.pipeline.incidents import IncidentStage
from plugin.pipeline.score import ScoreStage
from plugin.pipeline.suppress import SuppressStage
from plugin.pipeline.workers import WorkerError, WorkerModelDirError, WorkerPool, plan_workers
from plugin.resources import default_model_dir
from plugin.store import Store

if TYPE_CHECKING:  # loaded on use: a process whose workers hold the models never imports torch
    from plugin.models.embedder import BLTEmbedder
    from plugin.models.linformer_embedder import LinformerEmbedder

log = structlog.get_logger(__name__)


def model_dir_of(cfg: Config) -> Path:
    return Path(cfg.model) if cfg.model else default_model_dir()


def _model_path(model_dir: str | None) -> Path | None:
    """The model directory to load (None, with a warning, when no model ships here and none
    was named); a named path that is no directory is the user's error."""
    path = Path(model_dir) if model_dir else default_model_dir()
    if model_dir is None and not (path / "config.json").is_file():
        log.warning("no_model", reason=f"no shipped model at {path}; storing events without "
                    "embeddings (train one with `sysmon-blt train`, or pass --model)")
        return None
    if not path.is_dir():
        raise UsageError(f"--model {path}: not a model directory")
    return path


def load_embedder(model_dir: str | None) -> BLTEmbedder | None:
    """The BLT of the given model directory, or of the shipped default one (None, with a
    warning, when no model ships here and none was named)."""
    path = _model_path(model_dir)
    return None if path is None else _load_blt(path)


def _load_blt(path: Path) -> BLTEmbedder:
    from plugin.models.embedder import BLTEmbedder

    try:
        return BLTEmbedder.from_dir(path)
    except ModelDirError as exc:
        raise UsageError(f"--model {path}: {exc}") from exc


def _wants_shadow(cfg: Config) -> bool:
    """Whether the shadow runs: a sample rate above 0 and a Linformer in the model directory
    (else a warning says why not)."""
    if cfg.shadow_sample_rate <= 0:
        return False
    path = model_dir_of(cfg)
    if not has_linformer(path):
        log.warning("no_shadow", model_dir=str(path), reason="the model directory has no "
                    "Linformer; only the BLT runs (train one with `sysmon-blt train`)")
        return False
    return True


def load_shadow(cfg: Config) -> LinformerEmbedder | None:
    """The Linformer shadow of the model directory, or None (rate 0, or the directory has none)."""
    if not _wants_shadow(cfg):
        return None
    from plugin.models.linformer_embedder import LinformerEmbedder

    path = model_dir_of(cfg)
    try:
        return LinformerEmbedder.from_dir(path)
    except ModelDirError as exc:
        raise UsageError(f"--model {path}: {exc}") from exc


def load_models(cfg: Config, *, spare_core: bool = False):
    """The primary, the shadow (or None) and the embedding workers (or None) that the
    configuration asks for; (None, None, None) when no model ships here and none was named.

    With worker processes (the ``workers`` setting, `plan_workers`), the models load in the
    workers only, and this process holds `RemoteModel` stand-ins that ask the workers for
    vectors and surprisal: loading them here as well cost this process ~200 MB resident (torch
    itself ~180 MB) for a copy that only explained the odd outlier. Without workers both load
    here. ``spare_core``: see `plan_workers`. The caller closes the pool."""
    path = _model_path(cfg.model)
    if path is None:
        return None, None, None
    plan = plan_workers(cfg.workers, spare_core=spare_core)
    if not plan.devices:
        return _load_blt(path), load_shadow(cfg), None
    shadow = _wants_shadow(cfg)
    try:
        pool = WorkerPool(path, plan, shadow=shadow)
    except WorkerModelDirError as exc:
        raise UsageError(f"--model {path}: {exc.problem}") from exc
    except WorkerError as exc:
        raise UsageError(f"workers: {exc}") from exc
    return pool.remote("blt"), pool.remote("linformer") if shadow else None, pool


def embed_stage(store: Store, embedder, model_dir: str | None, sample_rate: float = 1.0,
                pool: WorkerPool | None = None, cache_texts: int = MAX_IN_MEMORY) -> EmbedStage:
    """An embed stage whose cache is seeded from the database (the model version registered);
    its texts are embedded on the pool's workers when there is one, else in this process.
    ``cache_texts``: vectors kept in memory (`plugin.pipeline.cache`)."""
    store.register_model(embedder.name, embedder.version, embedder.dim, model_dir)
    runs = pool.embedder(embedder) if pool is not None else embedder
    # a model whose pass leaves per-byte surprisal (the BLT) stores its summary with the vectors
    cache = EmbeddingCache(store, embedder.name, embedder.version, cache_texts,
                           with_bits=hasattr(embedder, "last_window_bits"))
    return EmbedStage(runs, cache, sample_rate=sample_rate)


def _scorer(store: Store, model, model_dir: str | None, embedder=None):
    try:
        return load_scorer(store, model.name, model.version,
                           Path(model_dir) if model_dir else default_model_dir(), embedder=embedder)
    except ReferenceModelError as exc:
        raise UsageError(f"--model: {exc}") from exc


def case_calibration(loaded) -> CaseCalibration | None:
    """The cold start's self-calibration (no fit yet, a surprisal threshold shipped), else None:
    a fit is a baseline someone vouched for and needs none."""
    threshold = getattr(loaded.scorer, "threshold", None)
    if loaded.origin != "shipped" or threshold is None:
        return None
    return CaseCalibration(threshold)


def model_stages(store: Store, embedder: BLTEmbedder, model_dir: str | None,
                 shadow: LinformerEmbedder | None = None,
                 shadow_rate: float = 1.0, suppress: list | None = None,
                 pool: WorkerPool | None = None,
                 incident_window_minutes: float = 60.0,
                 cold_start: str = "case", cache_texts: int = MAX_IN_MEMORY) -> list[BatchStage]:
    """Embed, then score with the database's latest fit (or the shipped reference clusters),
    then apply the suppression rules to its alerts, then group its outliers into incidents
    (``incident_window_minutes``: see `plugin.detect.incidents`); without a fit, ``cold_start``
    "case" calibrates the shipped scores on this run's events, "shipped" keeps the corpus's
    threshold as it is; then the same for the shadow
    model, if any, whose flags never become alerts or incidents. ``pool``: embedding workers
    (`open_pool`); the models loaded here still explain outliers. ``cache_texts``: distinct texts
    whose vectors and scores each model keeps in memory (a consumer's budget; an import keeps
    more)."""
    stages: list[BatchStage] = [embed_stage(store, embedder, model_dir, pool=pool,
                                            cache_texts=cache_texts)]
    loaded = _scorer(store, embedder, model_dir, embedder=embedder)
    if loaded is None:
        log.warning("no_scorer", reason="the model directory has no reference clusters and the "
                    "database no fit: events are embedded but not scored")
    else:
        explain = make_explainer(loaded, embedder, store.texts_by_hash)
        stages.append(ScoreStage(embedder.name, loaded.version, loaded.scorer, explain=explain,
                                 context=loaded.context,
                                 case=case_calibration(loaded) if cold_start == "case" else None,
                                 max_texts=cache_texts,
                                 embed_max_bytes=getattr(embedder, "max_bytes", None)))
        rules = SuppressRules.parse(suppress or [], "configuration: suppress")
        if rules:
            stages.append(SuppressStage(rules, embedder.name))
        stages.append(IncidentStage(embedder.name, loaded.context,
                                    timedelta(minutes=incident_window_minutes)))
    if shadow is not None:
        stages += shadow_stages(store, shadow, model_dir, shadow_rate, pool, cache_texts)
    return stages


def configured_stages(store: Store, cfg: Config, embedder: BLTEmbedder,
                      shadow: LinformerEmbedder | None, pool: WorkerPool | None, *,
                      cache_texts: int = MAX_IN_MEMORY) -> list[BatchStage]:
    """`model_stages` as the configuration sets them: the one place `import`, `rescore` (and
    its settle pass) and `consume` build their stages, so no entry point scores differently."""
    return model_stages(store, embedder, cfg.model, shadow, cfg.shadow_sample_rate, cfg.suppress,
                        pool=pool, incident_window_minutes=cfg.incident_window_minutes,
                        cold_start=cfg.cold_start, cache_texts=cache_texts)


def shadow_stages(store: Store, shadow: LinformerEmbedder, model_dir: str | None,
                  rate: float, pool: WorkerPool | None = None,
                  cache_texts: int = MAX_IN_MEMORY) -> list[BatchStage]:
    """The shadow's embed and score stages: same batches, its own vectors, clusters and scores."""
    stages: list[BatchStage] = [embed_stage(store, shadow, model_dir, rate, pool, cache_texts)]
    loaded = _scorer(store, shadow, model_dir)
    if loaded is None:
        log.warning("no_shadow_scorer", model=shadow.name, reason="no reference clusters and no "
                    "fit: the shadow's vectors are stored but not scored")
        return stages
    stages.append(ScoreStage(shadow.name, loaded.version, loaded.scorer, alerts=False,
                             max_texts=cache_texts))
    return stages


def embed_stages(store: Store, models, model_dir: str | None,
                 pool: WorkerPool | None = None) -> list[BatchStage]:
    """Embed stages only (no scoring), one per model: what `eval` imports with."""
    return [embed_stage(store, m, model_dir, pool=pool) for m in models if m is not None]


def open_pool(cfg: Config, embedder: BLTEmbedder | None,
              shadow: LinformerEmbedder | None, *, spare_core: bool = False) -> WorkerPool | None:
    """The embedding workers the ``workers`` setting plans (None: embed in this process, also
    when no model is loaded); ``spare_core``: see `plan_workers` (the consumer's small batches).
    The caller closes it."""
    if embedder is None:
        return None
    plan = plan_workers(cfg.workers, spare_core=spare_core)
    if not plan.devices:
        return None
    try:
        return WorkerPool(model_dir_of(cfg), plan, shadow=shadow is not None)
    except WorkerError as exc:
        raise UsageError(f"workers: {exc}") from exc


def refit(store: Store, stages: list[BatchStage], embedder: BLTEmbedder,
          shadow: LinformerEmbedder | None, model_dir: str | None) -> dict:
    """Fit the primary (and the shadow, on the same baseline) on the stored events, holding back
    every text the primary flagged, then switch the running score and incident stages to the new
    fits (`use_latest_fits`). The consumer calls it at the end of its learning period (through
    `finish_learning`), on the thread that runs the stages. Returns what `fit` reports."""
    from plugin.detect.fitting import fit_database

    res = fit_database(store, embedder.name, embedder.version, embedder=embedder)
    if shadow is not None:
        try:
            res["shadow"] = fit_database(store, shadow.name, shadow.version,
                                         flags_of=embedder.name)
        except ValueError as exc:
            log.warning("shadow_not_fitted", model=shadow.name, reason=str(exc))
    use_latest_fits(store, stages, embedder, shadow, model_dir)
    return res


def finish_learning(store: Store, stages: list[BatchStage], embedder: BLTEmbedder,
                    shadow: LinformerEmbedder | None, model_dir: str | None) -> dict:
    """The end of a consumer's learning period: when the store already holds a fit of the
    primary (another instance sharing the lake ended its period first, or an operator ran
    `sysmon-blt fit`), switch to it instead of fitting again; else `refit`.

    The check runs right before fitting, which narrows but does not close the window in which
    instances ending their periods together each fit: each then stores its own version, and
    every instance's fit watcher (`plugin.pipeline.fitwatch`) moves on to the newest, so they
    score alike again within one poll interval."""
    existing = store.latest_fit(embedder.name, embedder.version)
    if existing is None:
        return refit(store, stages, embedder, shadow, model_dir)
    switched = use_latest_fits(store, stages, embedder, shadow, model_dir)
    version = switched.get(embedder.name, (None, existing[0]))[1]
    log.info("learning_fit_adopted", model=embedder.name, version=version,
             reason="the store already holds a fit: not fitting again")
    return {"model": embedder.name, "model_version": embedder.version, "version": version,
            "adopted": True,
            "held_back_outlier_texts": existing[1].get("held_back_outlier_texts")}


def use_latest_fits(store: Store, stages: list[BatchStage], embedder: BLTEmbedder,
                    shadow: LinformerEmbedder | None,
                    model_dir: str | None) -> dict[str, tuple[int, int]]:
    """Switch each running score stage whose model has a newer fit in the store than the one it
    scores with (made here by `refit`, by another instance sharing the lake, or by an operator's
    `sysmon-blt fit`) to that fit, and the incident stage after it to the fit's context (its
    never-seen images). Each model's fit is loaded once. Call it on the thread that runs the
    stages, between batches: a batch is scored wholly with one fit. Returns {model: (old
    version, new version)} of the models switched ({} when every stage is current)."""
    models = {m.name: m for m in (embedder, shadow) if m is not None}
    fits: dict[str, LoadedScorer] = {}  # model name -> the fit switched to
    switched: dict[str, tuple[int, int]] = {}
    for st in stages:
        # the incident stage roots incidents on the same baseline as the score stage before it
        if isinstance(st, IncidentStage):
            if st.model in switched:
                st.use_fit(fits[st.model].context)
            continue
        model = models.get(getattr(st, "model", None)) if isinstance(st, ScoreStage) else None
        if model is None:
            continue
        # the version first (one small query): a model whose fit did not change loads nothing
        newest = store.latest_fit(model.name, model.version)
        if newest is None or newest[0] <= st.version:
            continue
        if model.name not in fits:
            loaded = _scorer(store, model, model_dir,
                             embedder=embedder if model is embedder else None)
            if loaded is None or loaded.origin != "fit":
                continue
            fits[model.name] = loaded
        loaded = fits[model.name]
        explain = make_explainer(loaded, embedder, store.texts_by_hash) if st.alerts else None
        switched[st.model] = (st.version, loaded.version)
        st.use_fit(loaded.version, loaded.scorer, explain=explain, context=loaded.context)
    return switched


def fit_watcher(store: Store, stages: list[BatchStage], embedder: BLTEmbedder,
                shadow: LinformerEmbedder | None, model_dir: str | None, every_s: float,
                clock: Callable[[], float] = time.monotonic) -> FitWatcher:
    """A `FitWatcher` over the running stages of `model_stages` (place it before them): every
    ``every_s`` it asks the store for the primary's (and the shadow's) latest fit version, and
    switches through `use_latest_fits` when one is newer than what its score stage uses."""
    models = {m.name: m.version for m in (embedder, shadow) if m is not None}
    return FitWatcher(store, stages, models,
                      lambda: use_latest_fits(store, stages, embedder, shadow, model_dir),
                      every_s=every_s, clock=clock)
