"""Embedding workers: spawned processes that hold the models and turn texts into vectors.

One worker per CUDA device, so an import or a consumer spreads over every GPU; on a CPU, one
worker with a thread per core by default (`plan_workers` says why), more on request. The parent
keeps parsing, normalizing, scoring and writing while a worker embeds. Each worker holds the
primary (BLT) and, when it runs, the shadow (Linformer), so both models see the same batches
without shipping texts twice to two processes.

The parent keeps scoring: a batch's new texts are dealt over the workers (round-robin in length
order, so each gets a like share of long texts), their vectors come back, and the one stage thread
of the flow scores them in log order. Embedding is a pure function of the text, so splitting it
cannot reorder anything the lineage context depends on.

A worker that dies (killed, out of memory, a crash in native code) is restarted and its share of
the batch sent again; a share that kills `MAX_TRIES` workers in a row is a bug worth stopping for,
and raises `WorkerError` instead of looping. Workers are started with the `spawn` method: a fork
of a process that has torch threads and a DuckDB connection is not safe.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import structlog

from plugin.models.blt.surprisal import PerThreadSurprisal

log = structlog.get_logger(__name__)

MAX_TRIES = 3
#: how a CPU worker's torch threads wait at the end of each parallel region (unless the user set
#: ``OMP_WAIT_POLICY``). OpenMP's default spins, which on a machine whose cores the parent's own
#: parsing, scoring and writing also use makes each thread burn its core waiting for a sibling
#: that the scheduler put aside. Measured on 2 cores (import of ../shared/data/otrf/compound,
#: 157,719 events, both models, one worker with 2 threads): 1,237-1,282 events/s spinning (BLT
#: 99-106 texts/s inside the import), 1,396 passive (BLT 137 texts/s)
OMP_WAIT_POLICY = "PASSIVE"
START_TIMEOUT_S = 300.0
POLL_S = 0.5


class WorkerError(RuntimeError):
    """The pool could not embed a batch: a worker failed to start, or kept dying on it."""


class WorkerModelDirError(WorkerError):
    """A worker refused the model directory (`plugin.models.checkpoint.ModelDirError`):
    ``problem`` is that error's message, for the user to act on."""

    def __init__(self, device: str, problem: str) -> None:
        super().__init__(f"embedding worker on {device} could not start: {problem}")
        self.problem = problem


@dataclass(frozen=True)
class WorkerPlan:
    """Where the workers run: one entry per worker (``cpu`` or ``cuda:N``), and torch threads
    for each CPU worker."""

    devices: tuple[str, ...]
    threads: int


def plan_workers(setting: int | str, cuda_devices: int | None = None,
                 cores: int | None = None, *, spare_core: bool = False) -> WorkerPlan:
    """The workers for a ``workers`` setting. ``auto``: one per CUDA device; on a CPU, one worker
    with a torch thread per core (on one core: none, embedding in-process). 0: in-process, no
    worker processes. N: N workers, spread over the CUDA devices, or on the CPU sharing the
    cores, at least a thread each. ``spare_core`` (a consumer): CPU workers leave one core to the
    consumer's own process.

    Why one CPU worker: every worker holds its own torch runtime (~650 MB resident in steady
    state). Why a spare core for a consumer: it parses, scores and writes while the worker embeds
    the next micro-batch (`Flow` runs them one batch apart), and a worker whose threads also
    claimed that core spun in its thread pool whenever the consumer ran. Measured on 2 cores (the
    consume stages over 8,000 simulated events, 100-event batches, both models, no broker): one
    worker with 2 threads 477 events/s, with 1 thread 879, two workers with 1 thread each 771,
    in-process 679. Through a broker on the same two cores, in-process was worse still: the
    consumer process never used more than one core (the models' Python work and the consumer's
    share one interpreter lock), 500 events/s ran 6 s behind (p50 5.7 s) where the worker ran
    700 events/s at p50 0.7 s. An import's 5,000-event batches use a worker's threads well
    (LSASS campaign 02: 2,246 events/s with 2 threads, 2,010 with 1), so it keeps every core. A
    bigger machine asks for more with N."""
    if cuda_devices is None:
        cuda_devices = cuda_device_count()
    cores = cores or os.cpu_count() or 1
    if setting == "auto":
        n = cuda_devices if cuda_devices else (1 if cores > 1 else 0)
    else:
        n = int(setting)
    if n <= 0:
        return WorkerPlan((), 0)
    if cuda_devices:
        return WorkerPlan(tuple(f"cuda:{i % cuda_devices}" for i in range(n)), 1)
    return WorkerPlan(("cpu",) * n, max(1, (cores - int(spare_core)) // n))


def _torch_has_cuda() -> bool:
    """Whether the installed torch is a CUDA build, read from its `version.py` without importing
    it: importing torch costs this process ~180 MB resident, which a CPU machine's parent
    process (parsing, scoring and writing while the workers embed) never needs."""
    import importlib.util
    import re

    spec = importlib.util.find_spec("torch")
    if spec is None or not spec.submodule_search_locations:
        return False
    try:
        text = (Path(next(iter(spec.submodule_search_locations))) / "version.py").read_text()
    except OSError:
        return True  # unreadable: ask torch itself
    found = re.search(r"^cuda\s*(?::[^=]*)?=\s*(.+)$", text, re.M)
    return found is None or found.group(1).strip() != "None"


def cuda_device_count() -> int:
    """CUDA devices torch can use; 0 without importing torch when it is a CPU-only build."""
    if not _torch_has_cuda():
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def _meta(model) -> dict:
    """What the parent needs of a worker's model to stand in for it (`RemoteModel`)."""
    return {"version": model.version, "dim": int(model.dim),
            "max_bytes": getattr(model, "max_bytes", None),
            "surprisal": hasattr(model, "last_surprisal")}


def _requests(conn: Connection) -> Iterator[Any]:
    """The parent's requests on one line of a worker, until it says stop (None) or goes away."""
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg is None:
            return
        yield msg


def _serve_surprisal(conn: Connection, models: dict) -> None:
    """The worker's second line: per-byte surprisal of texts to explain, answered on a thread of
    its own while the main line embeds, so the parent's scoring never waits behind the next
    batch's embedding (the entropy model only reads its weights: two threads may run it)."""
    from plugin.memory import release_freed_heap

    for name, texts in _requests(conn):
        try:
            conn.send(("ok", models[name].byte_surprisal(texts)))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"))
        # the same growth-gated heap trim as after an embedding (`plugin.memory`): without it
        # the worker's peak on LSASS 01-04 was 1,027-1,047 MiB, with it 835-856 (two runs each)
        release_freed_heap()


def _serve(conn: Connection, aux: Connection, model_dir: str, shadow: bool, device: str,
           threads: int) -> None:
    """A worker's life: load the models, say which, then embed what it is sent until told to
    stop (None) or the parent goes away; surprisal requests come on ``aux``
    (`_serve_surprisal`)."""
    import signal

    import torch

    from plugin.models.checkpoint import ModelDirError
    from plugin.models.embedder import BLTEmbedder

    # Ctrl-C reaches the whole process group: the parent drains and stops its workers itself
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    from plugin.models.linformer_embedder import LinformerEmbedder

    torch.set_num_threads(threads)
    models = {}
    try:
        blt = BLTEmbedder.from_dir(model_dir, device=device, threads=threads)
        models[blt.name] = blt
        if shadow:
            lin = LinformerEmbedder.from_dir(model_dir, device=device, threads=threads)
            models[lin.name] = lin
    except ModelDirError as exc:  # a missing, tampered or malformed file: the user's to fix
        conn.send(("model_dir_error", str(exc)))
        return
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    import threading

    threading.Thread(target=_serve_surprisal, args=(aux, models), daemon=True,
                     name="surprisal").start()
    conn.send(("ready", {n: _meta(m) for n, m in models.items()}))
    for name, texts in _requests(conn):
        try:
            model = models[name]
            vectors = model.embed(texts)
            # the BLT's per-byte surprisal from the same pass: the parent's scorer and
            # explanations read it instead of running the entropy model again
            known = getattr(model, "last_surprisal", None)
            surprisal = [known.get(t) for t in texts] if known is not None else None
            conn.send(("ok", (vectors, surprisal)))
        except Exception as exc:  # a Python error is the batch's, not the worker's: report it
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


class _Worker:
    """One spawned process and the pipe to it."""

    def __init__(self, ctx, model_dir: str, shadow: bool, device: str, threads: int) -> None:
        self.args = (model_dir, shadow, device, threads)
        self.ctx = ctx
        self.device = device
        self.proc = None
        self.conn: Connection | None = None
        self.aux: Connection | None = None  # the surprisal line (`_serve_surprisal`)

    def start(self) -> dict[str, dict]:
        self.launch()
        return self.ready()

    def launch(self) -> None:
        """Start the process; a start that fails leaves this worker unstarted (``proc`` None,
        pipe closed), so closing the pool reports the start's own error and nothing else."""
        parent, child = self.ctx.Pipe()
        aux, aux_child = self.ctx.Pipe()
        if self.device == "cpu":
            # a spawned child takes this process's environment, and OpenMP reads it once, at load
            os.environ.setdefault("OMP_WAIT_POLICY", OMP_WAIT_POLICY)
        proc = self.ctx.Process(target=_serve, args=(child, aux_child, *self.args), daemon=True,
                                name=f"sysmon-blt-embed-{self.device}")
        try:
            proc.start()
        except BaseException:
            parent.close()
            aux.close()
            raise
        finally:
            child.close()
            aux_child.close()
        self.proc, self.conn, self.aux = proc, parent, aux

    def ready(self) -> dict[str, dict]:
        """Wait for the worker's models; returns what each is (`_meta`)."""
        status, payload = self._answer(START_TIMEOUT_S)
        if status == "model_dir_error":
            raise WorkerModelDirError(self.device, str(payload))
        if status != "ready":
            raise WorkerError(f"embedding worker on {self.device} could not start: {payload}")
        return payload

    def send(self, name: str, texts: list[str]) -> None:
        self.conn.send((name, texts))

    def surprisal(self, name: str, texts: list[str]) -> tuple[str, object]:
        """Ask the surprisal line; its answer (("died", ...) when the process is gone)."""
        try:
            self.aux.send((name, texts))
        except (OSError, ValueError, AttributeError):
            return "died", "surprisal line closed"
        return self._answer(conn=self.aux)

    def _answer(self, timeout: float = float("inf"),
                conn: Connection | None = None) -> tuple[str, object]:
        """The worker's next message on ``conn`` (the main line by default); ("died", exit
        code) when the process is gone."""
        conn = conn or self.conn
        proc = self.proc  # the process asked (a restart on another thread may replace it)
        deadline = time.monotonic() + timeout
        try:
            while not conn.poll(POLL_S):
                if not proc.is_alive():
                    return "died", proc.exitcode
                if time.monotonic() > deadline:
                    return "died", "no answer in time"
            return conn.recv()
        except (EOFError, OSError):
            proc.join(5)
            return "died", proc.exitcode

    def result(self) -> tuple[str, object]:
        return self._answer()

    def stop(self) -> None:
        if self.proc is None:
            return
        try:
            self.conn.send(None)
        except (OSError, ValueError):
            pass
        self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)
        self.conn.close()
        if self.aux is not None:
            self.aux.close()

    def kill(self) -> None:
        """Stop a broken worker now (no goodbye: it may be stuck)."""
        if self.proc is not None and self.proc.is_alive():
            self.proc.kill()
        if self.proc is not None:
            self.proc.join(5)
        if self.conn is not None:
            self.conn.close()
        if self.aux is not None:
            self.aux.close()


class WorkerPool:
    """Spawned embedding workers for a model directory (see the module docstring)."""

    def __init__(self, model_dir: str | Path, plan: WorkerPlan, *, shadow: bool = False) -> None:
        if not plan.devices:
            raise ValueError("a worker pool needs at least one worker")
        ctx = mp.get_context("spawn")
        self.plan = plan
        self.restarts = 0
        self._workers = [_Worker(ctx, str(model_dir), shadow, d, plan.threads)
                         for d in plan.devices]
        self.models: dict[str, dict] = {}  # name -> `_meta` of the workers' model
        # one request at a time over each line: the flow's embed thread embeds, its scoring
        # thread asks for surprisal (explanations), a consumer's HTTP threads for both
        self._lock = threading.Lock()
        self._aux_lock = threading.Lock()
        try:
            for w in self._workers:  # all load their models at once
                w.launch()
            for w in self._workers:
                self.models = w.ready()
        except BaseException:
            self.close()
            raise
        log.info("embedding_workers_started", workers=len(self._workers),
                 devices=list(plan.devices), threads=plan.threads, models=sorted(self.models))

    def pids(self) -> list[int]:
        return [w.proc.pid for w in self._workers]

    @property
    def versions(self) -> dict[str, str]:
        return {n: m["version"] for n, m in self.models.items()}

    def byte_surprisal(self, name: str, texts: Sequence[str]) -> list[np.ndarray]:
        """Per text, the per-byte surprisal of model ``name`` (the BLT's entropy model), from the
        first worker's surprisal line, which answers while that worker embeds. A worker that
        died is not restarted here (the next embedding does that, with its retry): the caller
        gets a `WorkerError`, and an explanation records it instead of its spans."""
        texts = list(texts)
        with self._aux_lock:
            w = self._workers[0]
            status, payload = w.surprisal(name, texts)
        if status == "ok":
            return payload
        raise WorkerError(f"embedding worker on {w.device}: surprisal of {len(texts)} texts: "
                          f"{status} {payload}")

    def embed(self, name: str, texts: Sequence[str]) -> tuple[np.ndarray, list | None]:
        """Vectors of ``texts`` from model ``name``, in input order, over every worker; and,
        for a model that keeps it (the BLT), each text's per-byte surprisal (else None)."""
        texts = list(texts)
        if not texts:
            raise ValueError("nothing to embed")
        with self._lock:
            return self._embed(name, texts)

    def _embed(self, name: str, texts: list[str]) -> tuple[np.ndarray, list | None]:
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        shares = [order[k::len(self._workers)] for k in range(len(self._workers))]
        shares = [s for s in shares if s]
        out: np.ndarray | None = None
        surprisal: list | None = None
        tries = {k: 0 for k in range(len(shares))}
        todo = list(range(len(shares)))
        while todo:
            for k in todo:
                self._send(k, name, [texts[i] for i in shares[k]])
            failed, errors = [], []
            for k in todo:  # every answer, even after an error: none may be left in a pipe
                status, payload = self._workers[k].result()
                if status == "ok":
                    vectors, sur = payload
                    if out is None:
                        out = np.zeros((len(texts), vectors.shape[1]), dtype=np.float32)
                        surprisal = [None] * len(texts) if sur is not None else None
                    out[np.asarray(shares[k])] = vectors
                    if surprisal is not None:
                        for i, v in zip(shares[k], sur):
                            surprisal[i] = v
                elif status == "error":
                    errors.append(f"embedding worker on {self._workers[k].device}: {payload}")
                else:
                    tries[k] += 1
                    failed.append(k)
                    log.warning("embedding_worker_died", device=self._workers[k].device,
                                exit=payload, texts=len(shares[k]), tries=tries[k])
            if errors:
                raise WorkerError("; ".join(errors))
            for k in failed:
                if tries[k] >= MAX_TRIES:
                    raise WorkerError(f"embedding workers died {tries[k]} times on one batch of "
                                      f"{len(shares[k])} texts; stopping rather than looping")
                self._restart(k)
            todo = failed
        return out, surprisal

    def _send(self, k: int, name: str, texts: list[str]) -> None:
        try:
            self._workers[k].send(name, texts)
        except (OSError, ValueError):  # its pipe broke: the answer will say it died
            pass

    def _restart(self, k: int) -> None:
        w = self._workers[k]
        w.kill()
        w.start()
        self.restarts += 1
        log.info("embedding_worker_restarted", device=w.device, restarts=self.restarts)

    def remote(self, name: str) -> RemoteModel | None:
        """A stand-in for the workers' model ``name`` in this process (None: they hold none)."""
        meta = self.models.get(name)
        if meta is None:
            return None
        return (RemoteBLT if meta.get("surprisal") else RemoteModel)(self, name, meta)

    def embedder(self, local) -> "PooledEmbedder":
        """A stand-in for ``local`` (an embedder loaded in this process, for its name, version
        and dim) whose `embed` runs on the workers; a `RemoteModel` of this pool is one already."""
        if isinstance(local, RemoteModel) and local.pool is self:
            return local
        if self.versions.get(local.name) != local.version:
            raise WorkerError(f"embedding workers loaded {local.name} version "
                              f"{self.versions.get(local.name)}, this process {local.version}")
        return PooledEmbedder(self, local)

    def close(self) -> None:
        for w in self._workers:
            w.stop()


def _by_text(texts: list[str], surprisal: list) -> dict[str, np.ndarray]:
    """A pass's per-byte surprisal, as `last_surprisal` keeps it: by text, where a worker had it."""
    return {t: v for t, v in zip(texts, surprisal) if v is not None}


class PooledEmbedder:
    """The embedder protocol (name, version, dim, embed) over a `WorkerPool`."""

    def __init__(self, pool: WorkerPool, local) -> None:
        self.pool = pool
        self.local = local
        self.name = local.name
        self.version = local.version
        self.dim = local.dim

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """The workers' vectors; the BLT's surprisal of the same pass lands on the local model
        (`last_surprisal`), as an embed in this process would leave it for scoring and
        explanations."""
        texts = list(texts)
        vectors, surprisal = self.pool.embed(self.name, texts)
        if surprisal is not None and hasattr(self.local, "last_surprisal"):
            self.local.last_surprisal = _by_text(texts, surprisal)
        return vectors


class RemoteModel:
    """The parent's stand-in for a model that only the workers load: its name, version, dim and
    byte limit, and `embed`, asked of the pool. With it the parent never imports torch (~180 MB
    resident on a CPU machine); scoring, explanations and a consumer's refit read the same
    values a model loaded here would give."""

    def __init__(self, pool: WorkerPool, name: str, meta: dict) -> None:
        self.pool = pool
        self.name = name
        self.version: str = meta["version"]
        self.dim: int = meta["dim"]
        self.max_bytes: int | None = meta.get("max_bytes")

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.pool.embed(self.name, list(texts))[0]


class RemoteBLT(RemoteModel, PerThreadSurprisal):
    """`RemoteModel` of the BLT: its embed pass's per-byte surprisal lands here per thread, as
    on a BLT loaded in this process, and `surprisal` / `byte_surprisal` run its entropy model on
    a worker (an explanation, a text scored from the cache without a stored summary)."""

    def __init__(self, pool: WorkerPool, name: str, meta: dict) -> None:
        super().__init__(pool, name, meta)
        self._init_surprisal_slots()

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        texts = list(texts)
        vectors, surprisal = self.pool.embed(self.name, texts)
        self.last_surprisal = _by_text(texts, surprisal) if surprisal is not None else {}
        return vectors

    def byte_surprisal(self, texts: Sequence[str]) -> list[np.ndarray]:
        return self.pool.byte_surprisal(self.name, texts) if texts else []

    def surprisal(self, text: str) -> np.ndarray:
        return self.byte_surprisal([text])[0]
