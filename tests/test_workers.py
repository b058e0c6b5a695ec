"""Embedding workers: spawned processes, the same vectors as in-process, a killed worker restarted
and its share retried, and an import through the pool storing what an in-process import does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time

import duckdb
import numpy as np
import pytest

from plugin.models.embedder import BLTEmbedder
from plugin.models.linformer_embedder import LinformerEmbedder
from plugin.pipeline.workers import WorkerError, WorkerPool, plan_workers
from plugin.resources import default_model_dir

MODEL = default_model_dir()
pytestmark = pytest.mark.skipif(not (MODEL / "config.json").is_file(), reason="no shipped model")

TEXTS = [f"process_create image=c:\\program files\\vendor{i % 17}\\app{i}.exe "
         f"commandline=app{i}.exe --job {i * 7919} parent=c:\\windows\\explorer.exe" for i in range(300)]


def test_plan_follows_the_devices_and_cores():
    assert plan_workers("auto", cuda_devices=2, cores=16).devices == ("cuda:0", "cuda:1")
    assert plan_workers(3, cuda_devices=2, cores=16).devices == ("cuda:0", "cuda:1", "cuda:0")
    cpu = plan_workers("auto", cuda_devices=0, cores=2)
    assert cpu.devices == ("cpu",) and cpu.threads == 2  # one runtime's memory, every core
    # a consumer leaves a core to its own process, which scores and writes meanwhile
    assert plan_workers("auto", cuda_devices=0, cores=2, spare_core=True).threads == 1
    assert plan_workers("auto", cuda_devices=0, cores=4, spare_core=True).threads == 3
    assert plan_workers("auto", cuda_devices=2, cores=2, spare_core=True).devices == ("cuda:0", "cuda:1")
    assert plan_workers(2, cuda_devices=0, cores=2).threads == 1  # no oversubscription
    assert plan_workers("auto", cuda_devices=0, cores=1).devices == ()  # in-process
    assert plan_workers(0, cuda_devices=2, cores=16).devices == ()
    assert plan_workers(1, cuda_devices=0, cores=4).threads == 4
    assert plan_workers(1, cuda_devices=0, cores=4, spare_core=True).threads == 3
    assert plan_workers(4, cuda_devices=0, cores=4, spare_core=True).threads == 1  # at least one


@pytest.fixture(scope="module")
def pool():
    p = WorkerPool(MODEL, plan_workers(2, cuda_devices=0, cores=2), shadow=True)
    yield p
    p.close()


@pytest.fixture(scope="module")
def local():
    return BLTEmbedder.from_dir(MODEL)


def test_pool_vectors_and_surprisal_match_in_process(pool, local):
    want = local.embed(TEXTS)
    want_sur = dict(local.last_surprisal)
    proxy = pool.embedder(local)
    got = proxy.embed(TEXTS)
    assert got.shape == want.shape
    # float noise only (batch composition differs between one process and two)
    assert np.abs(got - want).max() < 2e-3
    assert (np.argmax(got @ want.T, axis=1) == np.arange(len(TEXTS))).all()  # in input order
    for t in TEXTS[:20]:  # the pass's surprisal lands on the local model, as in-process
        assert np.allclose(local.last_surprisal[t], want_sur[t], atol=1e-4)
    shadow = LinformerEmbedder.from_dir(MODEL)
    assert np.abs(pool.embedder(shadow).embed(TEXTS[:50]) - shadow.embed(TEXTS[:50])).max() < 2e-3


def test_remote_models_stand_in_for_the_workers_models(pool, local):
    """What the parent holds when only the workers load the models: the same name, version, dim
    and byte limit, vectors, and per-byte surprisal (from the embed pass, and asked alone)."""
    blt, lin = pool.remote("blt"), pool.remote("linformer")
    assert (blt.name, blt.version, blt.dim, blt.max_bytes) == (local.name, local.version, local.dim,
                                                               local.max_bytes)
    assert lin.name == "linformer" and not hasattr(lin, "last_surprisal")
    assert pool.remote("nope") is None
    want = local.embed(TEXTS[:40])
    assert np.abs(blt.embed(TEXTS[:40]) - want).max() < 2e-3
    assert set(blt.last_surprisal) == set(TEXTS[:40])
    alone = blt.byte_surprisal(TEXTS[:5])
    for t, a in zip(TEXTS[:5], alone):
        assert np.allclose(a, local.surprisal(t), atol=1e-4)
        assert np.allclose(a, blt.last_surprisal[t], atol=1e-4)
    assert np.allclose(blt.surprisal(TEXTS[7]), local.surprisal(TEXTS[7]), atol=1e-4)
    # per thread, as on a model loaded here: another thread's pass does not replace this one's
    seen = {}
    t = threading.Thread(target=lambda: seen.update(n=len(blt.embed(TEXTS[50:53])),
                                                    mine=set(blt.last_surprisal)))
    t.start()
    t.join()
    assert seen["mine"] == set(TEXTS[50:53]) and set(blt.last_surprisal) == set(TEXTS[:40])
    # the surprisal line answers while the main line embeds (the scoring thread's explanations
    # beside the embed thread's next batch), with the same values
    busy = threading.Thread(target=lambda: blt.embed(TEXTS * 3))
    busy.start()
    during = blt.byte_surprisal(TEXTS[10:14])
    busy.join()
    for t, a in zip(TEXTS[10:14], during):
        assert np.allclose(a, local.surprisal(t), atol=1e-4)


def test_a_broken_model_directory_is_the_users_error_through_workers(tmp_path):
    """`import --model DIR` with workers: the worker's refusal reaches the user as the same
    `--model` error an in-process load gives, not as a crash."""
    (tmp_path / "config.json").write_text("{not json")
    out = subprocess.run([sys.executable, "-m", "plugin.cli", "import", str(tmp_path), "--db",
                          str(tmp_path / "x.duckdb"), "--model", str(tmp_path)],
                         capture_output=True, text=True,
                         env={**os.environ, "SYSMON_BLT_WORKERS": "1"})
    assert out.returncode != 0
    assert f"--model {tmp_path}" in out.stderr and "Traceback" not in out.stderr


def test_cpu_workers_wait_passively_at_openmp_barriers(pool):
    # spinning waits made a 2-thread worker burn the core the importer parses on (OMP_WAIT_POLICY
    # is read once, when the worker loads torch: it must be in the worker's own environment)
    for pid in pool.pids():
        env = open(f"/proc/{pid}/environ", "rb").read().split(b"\0")
        want = os.environ.get("OMP_WAIT_POLICY", "PASSIVE").encode()
        assert b"OMP_WAIT_POLICY=" + want in env


def test_a_killed_worker_is_restarted_and_the_batch_retried(pool, local):
    proxy = pool.embedder(local)
    want = proxy.embed(TEXTS[:40])
    before = pool.restarts
    os.kill(pool.pids()[0], signal.SIGKILL)  # between batches
    time.sleep(0.2)
    assert np.abs(proxy.embed(TEXTS[:40]) - want).max() < 2e-3
    assert pool.restarts == before + 1

    big = TEXTS * 4  # long enough to be killed in the middle of it
    out: dict = {}
    t = threading.Thread(target=lambda: out.setdefault("v", proxy.embed(big)))
    t.start()
    time.sleep(0.5)
    os.kill(pool.pids()[1], signal.SIGKILL)
    t.join(120)
    assert out["v"].shape == (len(big), local.dim)
    assert np.abs(out["v"][:40] - want).max() < 2e-3
    assert pool.restarts == before + 2


def test_a_worker_that_cannot_load_says_why(tmp_path):
    with pytest.raises(WorkerError, match="could not start"):
        WorkerPool(tmp_path, plan_workers(1, cuda_devices=0, cores=2))


def test_a_process_that_cannot_start_is_the_error_reported(tmp_path, monkeypatch):
    """A spawn that fails (a script without the ``__main__`` guard, no processes left) is the
    error the caller sees; closing the half-made pool used to raise AttributeError over it."""
    import multiprocessing.context as mpc

    def refuse(self):
        raise RuntimeError("cannot start a process here")

    monkeypatch.setattr(mpc.SpawnProcess, "start", refuse)
    with pytest.raises(RuntimeError, match="cannot start a process here"):
        WorkerPool(default_model_dir(), plan_workers(2, cuda_devices=0, cores=2))


def test_an_import_through_workers_stores_what_an_in_process_one_does(tmp_path):
    sim = tmp_path / "sim.jsonl"
    run = [sys.executable, "-m", "plugin.cli"]
    subprocess.run([*run, "simulate", "--events", "1500", "--seed", "4", "--out", str(sim)],
                   check=True, capture_output=True)
    dbs = {}
    for workers in ("0", "2"):
        db = tmp_path / f"w{workers}.duckdb"
        env = {**os.environ, "SYSMON_BLT_WORKERS": workers}
        subprocess.run([*run, "import", str(sim), "--db", str(db), "-q", "--json"], check=True,
                       capture_output=True, env=env)
        dbs[workers] = db
    con = duckdb.connect(str(dbs["0"]), read_only=True)
    con.execute(f"ATTACH '{dbs['2']}' AS w (READ_ONLY)")
    n0, n2 = (con.execute(f"SELECT count(*) FROM {d}events").fetchone()[0] for d in ("", "w."))
    assert n0 == n2 == 1500
    diff, flips, pairs = con.execute(
        "SELECT max(abs(a.score - b.score)), sum((a.is_outlier <> b.is_outlier)::int), count(*) "
        "FROM assignments a JOIN w.assignments b USING (event_key, model)").fetchone()
    assert pairs == 3000 and diff < 0.01 and flips == 0
    alerts = [con.execute(f"SELECT count(*), sum(count) FROM {d}alerts").fetchone() for d in ("", "w.")]
    assert alerts[0] == alerts[1]


def test_an_import_through_workers_never_loads_torch_in_the_importer(tmp_path):
    """The importer's own process holds stand-ins for the workers' models (torch there cost
    ~180 MB resident); scoring, explanations and the settle pass still run."""
    sim = tmp_path / "sim.jsonl"
    run = [sys.executable, "-m", "plugin.cli"]
    subprocess.run([*run, "simulate", "--events", "1500", "--seed", "5", "--out", str(sim)],
                   check=True, capture_output=True)
    code = ("import sys; from plugin.cli import main; rc = main(); "
            "print('TORCH', 'torch' in sys.modules, file=sys.stderr); raise SystemExit(rc)")
    out = subprocess.run([sys.executable, "-c", code, "import", str(sim), "--db",
                          str(tmp_path / "t.duckdb"), "-q", "--json"], capture_output=True,
                         text=True, env={**os.environ, "SYSMON_BLT_WORKERS": "1"})
    assert out.returncode == 0, out.stderr[-2000:]
    assert "TORCH False" in out.stderr
    con = duckdb.connect(str(tmp_path / "t.duckdb"), read_only=True)
    scored, explained = con.execute(
        "SELECT count(*), count(explanation) FROM assignments WHERE model = 'blt'").fetchone()
    assert scored == 1500 and explained > 0
