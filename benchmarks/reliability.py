"""Reliability under hostile input, crashes and outages (issue 17): one table of what was tried
and what broke.

Sections (all by default; `--only` picks some):
  hostile  real EVTX files from ../shared/data mutated (truncation, bit flips, broken chunk
           headers, zero-filled regions), each imported alone in a forked `sysmon-blt import`
           with a time limit; JSON lines with 5 MB fields, 100k-deep nesting, NUL bytes, lone
           surrogates, non-UTF-8 bytes, numbers where strings belong, around real Sysmon lines,
           imported, then the same lines through Kafka (`consume`) and `POST /enrich`
  resume   an import SIGKILLed at random moments and run again, against an uninterrupted run
  outage   the broker paused (SIGSTOP ... SIGCONT) under a running consumer; the DuckDB file
           held by another process; a write on a full filesystem (a small tmpfs, when this
           process may mount one)
  soak     simulated events through Kafka at a steady rate: RSS, open files, lag, produced =
           stored (`--soak-seconds 1800` for the 30-minute run)

The oracle is independent of the product: an event is *lost* when a Sysmon record that pyevtx-rs
(reading the mutated file itself, one record at a time) or `json.loads` (one line or message) can
read is neither stored nor a dead letter; records that are not Sysmon are counted apart. A *crash*
is a run that died, raised, or exited non-zero on bad data; a *hang* one that passed its limit.
*Doubled* counts one record stored twice (two rows for one file position or Kafka offset, or more
rows than the uninterrupted run).

usage: python benchmarks/reliability.py [--data ../shared/data] [--only hostile,resume,outage,soak]
       [--mutants 48] [--seed 0] [--pause 30] [--soak-seconds 120] [--soak-rate 200] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

sys.path.insert(0, str(Path(__file__).resolve().parent))
from stream import rss_mb, start_tansu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SYSMON_CHANNEL = "microsoft-windows-sysmon/operational"
RID_IN_PAYLOAD = re.compile(r'"EventRecordID"\s*:\s*(\d+)')
CHUNK = 0x10000
FILE_HEADER = 0x1000


@dataclass
class Row:
    """One line of the table."""

    check: str
    inputs: int = 0
    crashes: int = 0
    hangs: int = 0
    dead_letters: int = 0
    lost: int = 0
    doubled: int = 0
    note: str = ""
    failures: list[str] = field(default_factory=list)

    def fail(self, what: str) -> None:
        if len(self.failures) < 5:
            self.failures.append(what)


def cli(*args: str) -> list[str]:
    return [sys.executable, "-c", "from plugin.cli import main; raise SystemExit(main())", *args]


def fork_cli(args: list[str], timeout: float, log_path: Path) -> tuple[int | None, bool]:
    """`sysmon-blt ARGS` in a forked child (the parent imported the package once, so a child
    starts in milliseconds); returns (exit code, hung). An uncaught exception exits 70, a signal
    gives its negative number, like subprocess."""
    pid = os.fork()
    if pid == 0:  # the child: never returns
        rc = 70
        try:
            os.setsid()  # its own process group: a kill takes its embedding workers along
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            from plugin.cli import main

            rc = main(args)
        except SystemExit as exc:
            rc = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(rc or 0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status), False
        time.sleep(0.02)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    os.waitpid(pid, 0)
    return None, True


def db_rows(db: Path) -> tuple[list[tuple], list[tuple]]:
    """(events: source, position, record_id, event_key), (dead letters: source, position,
    reason, payload)."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        ev = con.execute("SELECT source, position, record_id, event_key FROM events").fetchall()
        dl = con.execute("SELECT source, position, reason, payload FROM dead_letters").fetchall()
    finally:
        con.close()
    return ev, dl


# ------------------------------------------------------------------------------ hostile EVTX
def evtx_oracle(path: Path) -> dict:
    """What pyevtx-rs reads from the file on its own: Sysmon record ids, and how many other
    records and errors (in a forked child: a parser that dies reads nothing)."""
    out = path.with_suffix(".oracle.json")
    pid = os.fork()
    if pid == 0:
        res = {"sysmon": [], "other": 0, "errors": 0}
        try:
            import evtx

            it = evtx.PyEvtxParser(str(path), number_of_threads=1).records_json()
            while True:
                try:
                    rec = next(it)
                except StopIteration:
                    break
                except Exception:
                    res["errors"] += 1
                    if res["errors"] > 100_000:
                        break
                    continue
                try:
                    system = json.loads(rec["data"])["Event"]["System"]
                    channel = system.get("Channel")
                    # the record's own EventRecordID, which a filtered export keeps while the
                    # record header renumbers from 1: the store keeps the same one
                    rid = system.get("EventRecordID", rec["event_record_id"])
                except Exception:
                    res["other"] += 1
                    continue
                if isinstance(channel, str) and channel.lower() == SYSMON_CHANNEL:
                    res["sysmon"].append(rid)
                else:
                    res["other"] += 1
        except Exception:
            pass
        out.write_text(json.dumps(res))
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    try:
        return json.loads(out.read_text())
    except (OSError, ValueError):
        return {"sysmon": [], "other": 0, "errors": 0, "oracle_died": status}


def sysmon_evtx_files(data: Path, k: int) -> list[Path]:
    """The k largest EVTX files holding Sysmon records (by the inventory's count when present),
    then smaller ones: mutations of both large and small logs."""
    inv = data / "INVENTORY.md"
    counts: list[tuple[int, Path]] = []
    if inv.exists():
        for line in inv.read_text().splitlines():
            cells = [c.strip() for c in line.split("|")]
            if len(cells) > 5 and cells[1].endswith(".evtx") and cells[4].isdigit() and int(cells[4]) > 0:
                counts.append((int(cells[4]), data / cells[1]))
    else:
        counts = [(1, p) for p in sorted(data.rglob("*.evtx"))]
    counts = [c for c in counts if c[1].exists()]
    counts.sort(key=lambda c: (-c[0], str(c[1])))
    return [p for _, p in counts[: k // 2]] + [p for _, p in counts[k // 2:: max(1, len(counts) // k)]][: k - k // 2]


def mutate(blob: bytes, kind: str, rng: random.Random) -> bytes:
    b = bytearray(blob)
    n = len(b)
    chunks = max(1, (n - FILE_HEADER) // CHUNK)
    if kind == "truncate":
        return bytes(b[: rng.randrange(64, n)])
    if kind == "bitflip":
        for _ in range(rng.choice((1, 8, 64, 512))):
            i = rng.randrange(n)
            b[i] ^= 1 << rng.randrange(8)
    elif kind == "chunk_header":
        for _ in range(rng.randint(1, 3)):
            start = FILE_HEADER + rng.randrange(chunks) * CHUNK
            off = rng.choice((0, 8, 16, 24, 32, 40, 44, 48, 120, 124, 128))  # magic, counts, offsets, checksums
            for j in range(rng.choice((1, 4, 8))):
                if start + off + j < n:
                    b[start + off + j] = rng.randrange(256)
    elif kind == "zero_fill":
        for _ in range(rng.randint(1, 3)):
            start = rng.randrange(n)
            length = rng.choice((16, 512, 4096, 40000))
            b[start: start + length] = bytes(len(b[start: start + length]))
    elif kind == "file_header":
        for _ in range(rng.randint(1, 4)):
            b[rng.randrange(min(n, 128))] = rng.randrange(256)
    return bytes(b)


def hostile_evtx(data: Path, tmp: Path, n_mutants: int, seed: int, limit: float) -> Row:
    row = Row("EVTX files mutated")
    rng = random.Random(seed)
    sources = sysmon_evtx_files(data, 8)
    kinds = ["truncate", "bitflip", "chunk_header", "zero_fill", "file_header"]
    mdir = tmp / "mutants"
    mdir.mkdir()
    readable = stored = 0
    for i in range(n_mutants):
        src = sources[i % len(sources)]
        kind = kinds[i % len(kinds)]
        path = mdir / f"{i:03d}-{kind}.evtx"
        path.write_bytes(mutate(src.read_bytes(), kind, rng))
        oracle = evtx_oracle(path)
        db = mdir / f"{i:03d}.duckdb"
        rc, hung = fork_cli(["import", str(path), "--db", str(db), "--no-embed", "-q", "--json"],
                            limit, mdir / f"{i:03d}.log")
        row.inputs += 1
        if hung:
            row.hangs += 1
            row.fail(f"{path.name} (from {src.name}): over {limit:.0f} s")
            continue
        if rc != 0:
            row.crashes += 1
            row.fail(f"{path.name} (from {src.name}): exit {rc}, see {mdir / f'{i:03d}.log'}")
            continue
        ev, dl = db_rows(db)
        row.dead_letters += len(dl)
        kept = {r[2] for r in ev} | {int(m.group(1)) for d in dl if d[3]
                                     for m in [RID_IN_PAYLOAD.search(d[3])] if m}
        want = set(oracle["sysmon"])
        missing = want - kept
        readable += len(want)
        stored += len(ev)
        row.lost += len(missing)
        if missing:
            row.fail(f"{path.name}: {len(missing)} readable Sysmon records neither stored nor "
                     f"dead letters (record ids {sorted(missing)[:5]})")
        row.doubled += len(ev) - len({(r[0], r[1]) for r in ev})
    row.note = (f"{len(sources)} real logs x {len(kinds)} kinds of damage; pyevtx-rs alone read "
                f"{readable:,} Sysmon records, {stored:,} stored")
    return row


# ------------------------------------------------------------------------------ hostile JSON
def real_json_lines(data: Path, n: int, seed: int) -> tuple[list[bytes], list[bytes]]:
    """(Sysmon lines, other lines) from the OTRF archives: real records in NXLog's shape."""
    import zipfile

    sysmon: list[bytes] = []
    other: list[bytes] = []
    for z in sorted((data / "otrf").rglob("*.zip")):
        with zipfile.ZipFile(z) as zf:
            for name in zf.namelist():
                if not name.endswith(".json"):
                    continue
                for line in zf.open(name):
                    line = line.rstrip(b"\r\n")
                    if not line:
                        continue
                    (sysmon if is_sysmon_line(line) else other).append(line)
        if len(sysmon) >= 20 * n:
            break
    rng = random.Random(seed)
    return rng.sample(sysmon, min(n, len(sysmon))), rng.sample(other, min(n // 4, len(other)))


def is_sysmon_doc(doc: object) -> bool:
    """The oracle's own test: a JSON object whose channel, source or provider names Sysmon."""
    if not isinstance(doc, dict):
        return False
    winlog = doc.get("winlog") if isinstance(doc.get("winlog"), dict) else {}
    for v in (doc.get("Channel"), doc.get("SourceName"), doc.get("ProviderName"),
              doc.get("Provider"), doc.get("log_name"), doc.get("source_name"),
              winlog.get("channel"), winlog.get("provider_name")):
        if isinstance(v, str) and "sysmon" in v.lower():
            return True
    return False


def is_sysmon_line(line: bytes) -> bool:
    try:
        return is_sysmon_doc(json.loads(line))
    except (ValueError, RecursionError):
        return False


def hostile_variants(good: list[bytes], rng: random.Random) -> list[tuple[str, bytes]]:
    """Hostile lines, each named for what it does, built from real Sysmon lines."""
    out: list[tuple[str, bytes]] = []

    def doc() -> dict:
        return json.loads(rng.choice(good))

    def dumps(d: object, **kw) -> bytes:
        return json.dumps(d, **kw).encode()

    for size in (5 * 1024 * 1024, 900_000):
        d = doc()
        d["CommandLine"] = "powershell -enc " + "A" * size
        out.append((f"field of {size:,} bytes", dumps(d)))
    d = doc()
    d["Message"] = "x" * (20 * 1024 * 1024)
    out.append(("line of 20 MB", dumps(d)))
    out.append(("100k-deep nesting", b"[" * 100_000 + b"]" * 100_000))
    d = doc()
    out.append(("100k-deep nesting in a field",
                dumps(d)[:-1] + b', "Deep": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"))
    d = doc()
    d["Deep"] = json.loads("[" * 500 + "]" * 500)
    out.append(("500-deep nesting in a field", dumps(d)))
    d = doc()
    d["CommandLine"] = "cmd.exe /c \x00evil\x00"
    out.append(("NUL escaped in a string", dumps(d)))
    out.append(("NUL bytes raw", dumps(doc()).replace(b'"', b'"\x00', 3)))
    d = doc()
    d["CommandLine"] = "cmd.exe \ud800 \udfff tail"
    out.append(("lone surrogates", dumps(d)))
    d = doc()
    d["Image"] = "C:\\tmp\\\udc80.exe"
    out.append(("lone surrogate in Image", dumps(d)))
    out.append(("non-UTF-8 bytes", dumps(doc()).replace(b'",', b'\xff\xfe\xc3",', 2)))
    for key, value in (("EventID", "1"), ("EventID", 1.5), ("EventID", [1]), ("EventID", -1),
                       ("EventID", 2**70), ("Hostname", 12345), ("Hostname", None),
                       ("CommandLine", 42), ("CommandLine", {"a": [1, 2]}), ("Image", True),
                       ("UtcTime", 1700000000), ("UtcTime", "not a time"),
                       ("ProcessGuid", ["x"]), ("RecordNumber", "abc"), ("RecordNumber", 2**80)):
        d = doc()
        d[key] = value
        out.append((f"{key} = {json.dumps(value)[:20]}", dumps(d)))
    out.append(("an array of events", b"[" + rng.choice(good) + b"," + rng.choice(good) + b"]"))
    out.append(("a bare number", b"12345"))
    out.append(("a bare string", b'"Microsoft-Windows-Sysmon/Operational"'))
    out.append(("empty object", b"{}"))
    out.append(("truncated line", rng.choice(good)[:200]))
    out.append(("binary noise", bytes(rng.randrange(256) for _ in range(3000)).replace(b"\n", b" ")))
    out.append(("event XML, broken", b"<Event><System><Channel>Microsoft-Windows-Sysmon/Operational"))
    out.append(("XML bomb", b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "aaaaaaaaaa">'
                + b"".join(b'<!ENTITY %c "%s">' % (98 + i, (b"&%c;" % (97 + i)) * 10) for i in range(8))
                + b']><Event><System><Channel>Microsoft-Windows-Sysmon/Operational</Channel>'
                b'<EventID>1</EventID></System><EventData><Data Name="CommandLine">&i;</Data>'
                b"</EventData></Event>"))
    return out


def hostile_json_file(data: Path, tmp: Path, seed: int) -> tuple[Path, list[tuple[str, bytes]]]:
    rng = random.Random(seed)
    good, other = real_json_lines(data, 400, seed)
    lines: list[tuple[str, bytes]] = [("real Sysmon", g) for g in good] + [("real, not Sysmon", o) for o in other]
    for name, line in hostile_variants(good, rng):
        lines.insert(rng.randrange(len(lines) + 1), (name, line))
    path = tmp / "hostile.jsonl"
    with path.open("wb") as f:
        for _, line in lines:
            f.write(line.replace(b"\n", b" ") + b"\n")
    return path, lines


def oracle_lines(lines: list[tuple[str, bytes]]) -> tuple[set[int], int]:
    """Positions of the lines json.loads reads as a Sysmon event; how many it reads as other."""
    sysmon, other = set(), 0
    for i, (_, line) in enumerate(lines):
        try:
            d = json.loads(line)
        except (ValueError, RecursionError):
            continue
        if is_sysmon_doc(d):
            sysmon.add(i)
        else:
            other += 1
    return sysmon, other


def judge_positions(row: Row, lines: list[tuple[str, bytes]], stored: list[int],
                    dead: list[int]) -> None:
    want, _ = oracle_lines(lines)
    missing = want - set(stored) - set(dead)
    row.lost += len(missing)
    row.doubled += len(stored) - len(set(stored))
    row.dead_letters += len(dead)
    for i in sorted(missing)[:5]:
        row.fail(f"lost: {lines[i][0]} (line {i + 1})")


def hostile_json(path: Path, lines: list[tuple[str, bytes]], tmp: Path, limit: float) -> Row:
    row = Row("JSON lines, hostile", inputs=len(lines))
    db = tmp / "hostile.duckdb"
    t0 = time.monotonic()
    rc, hung = fork_cli(["import", str(path), "--db", str(db), "-q", "--json"], limit,
                        tmp / "hostile.log")
    if hung or rc != 0:
        row.hangs += int(hung)
        row.crashes += int(not hung)
        row.fail(f"import: exit {rc}, hung {hung}; see {tmp / 'hostile.log'}")
        return row
    ev, dl = db_rows(db)
    judge_positions(row, lines, [r[1] for r in ev], [d[1] for d in dl if d[1] is not None])
    hostile = sum(not n.startswith("real") for n, _ in lines)
    row.note = f"{hostile} hostile among {len(lines) - hostile} real lines; embedded, scored, {time.monotonic() - t0:.0f} s"
    return row


# ------------------------------------------------------------------------------ resume
def resume_inputs(data: Path, tmp: Path, target: int) -> Path:
    """A folder of real inputs (links): every EVTX file holding Sysmon records, then OTRF
    archives until about `target` Sysmon events; many units, so a kill lands mid-file."""
    folder = tmp / "resume-inputs"
    folder.mkdir()
    rows = []
    inv = data / "INVENTORY.md"
    for line in inv.read_text().splitlines():
        cells = [c.strip() for c in line.split("|")]
        if len(cells) > 5 and cells[4].isdigit() and int(cells[4]) > 0:
            rows.append((cells[1], int(cells[4])))
    total = 0
    for name, n in sorted(rows, key=lambda r: (not r[0].endswith(".evtx"), -r[1], r[0])):
        if total >= target:
            break
        if name.endswith(".zip") and n > target // 3:
            continue
        src = data / name
        if src.exists():
            (folder / name.replace("/", "__")).symlink_to(src)
            total += n
    return folder


def store_digest(db: Path) -> dict:
    """What a run left: event keys, dead letters (source, position, reason), per-event model
    rows, finished imports."""
    con = duckdb.connect(str(db), read_only=True)
    try:
        q = lambda sql: con.execute(sql).fetchall()  # noqa: E731
        return {
            "keys": {r[0] for r in q("SELECT event_key FROM events")},
            "events": q("SELECT count(*) FROM events")[0][0],
            "dead": sorted(q("SELECT source, coalesce(position, -1), reason FROM dead_letters")),
            "assignments": q("SELECT count(*), count(DISTINCT (event_key, model)) FROM assignments")[0],
            "complete": q("SELECT count(*) FROM imports WHERE status = 'complete'")[0][0],
        }
    finally:
        con.close()


def resume(data: Path, tmp: Path, kills: int, seed: int, limit: float) -> Row:
    """One uninterrupted import; then the same import SIGKILLed `kills` times at random moments
    and run again each time, then once to the end, into one database: the same events, none
    doubled; then a last rerun, where every file is finished, times the skip."""
    row = Row("import SIGKILLed and rerun")
    rng = random.Random(seed)
    folder = resume_inputs(data, tmp, 15_000)
    ref_db, db = tmp / "resume-ref.duckdb", tmp / "resume.duckdb"
    t0 = time.monotonic()
    rc, hung = fork_cli(["import", str(folder), "--db", str(ref_db), "-q", "--json"], limit,
                        tmp / "resume-ref.log")
    full = time.monotonic() - t0
    if rc != 0:
        row.crashes += 1
        row.fail(f"uninterrupted import: exit {rc}, hung {hung}; see {tmp / 'resume-ref.log'}")
        return row
    ref = store_digest(ref_db)
    killed_at = []
    for k in range(kills):
        at = rng.uniform(0.5, full)
        rc, hung = fork_cli(["import", str(folder), "--db", str(db), "-q", "--json"], at,
                            tmp / f"resume-{k}.log")
        row.inputs += 1
        killed_at.append(f"{at:.1f}" if hung else f"({at:.1f}: done)")
        if not hung and rc != 0:
            row.crashes += 1
            row.fail(f"run {k} (to be killed at {at:.1f} s): exit {rc}; see {tmp / f'resume-{k}.log'}")
    rc, hung = fork_cli(["import", str(folder), "--db", str(db), "-q", "--json"], limit,
                        tmp / "resume-last.log")
    row.inputs += 1
    if rc != 0:
        row.crashes += int(not hung)
        row.hangs += int(hung)
        row.fail(f"final rerun: exit {rc}; see {tmp / 'resume-last.log'}")
        return row
    t1 = time.monotonic()
    rc, _ = fork_cli(["import", str(folder), "--db", str(db), "-q", "--json"], limit,
                     tmp / "resume-skip.log")
    skip = time.monotonic() - t1
    got = store_digest(db)
    row.dead_letters = len(got["dead"])
    row.lost = len(ref["keys"] - got["keys"])
    row.doubled = (got["events"] - len(got["keys"])) + (got["assignments"][0] - got["assignments"][1]) \
        + max(0, len(got["dead"]) - len(ref["dead"]))
    if ref["keys"] != got["keys"]:
        row.fail(f"{len(ref['keys'] - got['keys'])} events of the uninterrupted run missing, "
                 f"{len(got['keys'] - ref['keys'])} extra")
    if got["dead"] != ref["dead"]:
        row.fail(f"dead letters differ: {len(ref['dead'])} uninterrupted, {len(got['dead'])} resumed")
    if got["assignments"][1] != len(got["keys"]):
        row.fail(f"{len(got['keys']) - got['assignments'][1]} events without a model row")
    row.note = (f"{ref['events']:,} events in {ref['complete']} inputs; killed at "
                f"{', '.join(killed_at)} s of a {full:.0f} s import; rerun of finished files "
                f"{skip:.1f} s (exit {rc})")
    return row


# ------------------------------------------------------------------------------ Kafka helpers
def produce(bootstrap: str, topic: str, values: list[bytes], partitions: int = 1) -> None:
    from confluent_kafka import Producer
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})  # alive until the topic exists
    admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
    p = Producer({"bootstrap.servers": bootstrap, "message.max.bytes": 2_000_000,
                  "linger.ms": 5})
    for v in values:
        p.produce(topic, v)
        p.poll(0)
    if p.flush(60):
        raise SystemExit("producer could not deliver")


def consumer_env() -> dict[str, str]:
    return {**os.environ, "SYSMON_BLT_KAFKA_SESSION_TIMEOUT_MS": "6000",
            "SYSMON_BLT_KAFKA_AUTO_OFFSET_RESET": "earliest"}


def store_count(db: Path, topic: str | None = None) -> tuple[int, int] | None:
    """(events, dead letters) stored so far; None while the writer holds the file."""
    try:
        con = duckdb.connect(str(db), read_only=True)
    except duckdb.Error:
        return None
    try:
        return (con.execute("SELECT count(*) FROM events").fetchone()[0],
                con.execute("SELECT count(*) FROM dead_letters").fetchone()[0])
    except duckdb.Error:
        return None
    finally:
        con.close()


def stop(proc: subprocess.Popen, timeout: float = 30) -> int | None:
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        return None


def consume_cmd(bootstrap: str, topic: str, db: Path, group: str, *extra: str) -> list[str]:
    return cli("consume", "--bootstrap", bootstrap, "--topic", topic, "--group", group,
               "--db", str(db), "-q", *extra)


def wait_for(pred, timeout: float, every: float = 0.5) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(every)
    return False


def hostile_kafka(bootstrap: str, lines: list[tuple[str, bytes]], tmp: Path) -> Row:
    """The hostile lines as messages (those under the broker's 1 MB message limit)."""
    sent = [(n, v) for n, v in lines if len(v) < 1_000_000]
    row = Row("Kafka messages, hostile", inputs=len(sent))
    produce(bootstrap, "hostile", [v for _, v in sent])
    db = tmp / "kafka-hostile.duckdb"
    log_f = (tmp / "kafka-hostile.log").open("wb")
    proc = subprocess.Popen(consume_cmd(bootstrap, "hostile", db, "hostile", "--no-embed"),
                            env=consumer_env(), stdout=log_f, stderr=subprocess.STDOUT)
    # the consumer holds the file: wait on its committed offsets instead
    from stream import committed

    ok = wait_for(lambda: sum(committed(bootstrap, "hostile", "hostile").values()) >= len(sent)
                  or proc.poll() is not None, 180, 1.0)
    rc = stop(proc)
    if proc.returncode not in (0,) or not ok:
        row.crashes += int(rc is not None and rc != 0)
        row.hangs += int(not ok or rc is None)
        row.fail(f"consume: exit {rc}, all committed {ok}; see {tmp / 'kafka-hostile.log'}")
        if rc is None or rc != 0:
            return row
    ev, dl = db_rows(db)
    judge_positions(row, sent, [r[1] for r in ev], [d[1] for d in dl if d[1] is not None])
    row.note = f"{len(lines) - len(sent)} lines over the broker's 1 MB limit not sent"
    return row


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def hostile_enrich(db: Path, lines: list[tuple[str, bytes]], tmp: Path) -> Row:
    """Every hostile line as a `POST /enrich` body: a 4xx or an answer, never a 5xx, a dropped
    connection or a hang; the service answers /healthz at the end."""
    row = Row("POST /enrich, hostile")
    port = free_port()
    log_f = (tmp / "serve.log").open("wb")
    proc = subprocess.Popen(cli("serve", "--db", str(db), "--port", str(port), "-q"),
                            stdout=log_f, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        if not wait_for(lambda: _status(url + "/healthz", None, 2)[0] == 200, 120):
            row.crashes += 1
            row.fail(f"serve did not start; see {tmp / 'serve.log'}")
            return row
        for name, body in lines:
            if name.startswith("real"):
                continue
            row.inputs += 1
            code, err = _status(url + "/enrich", body, 60)
            if code is None and "timed out" in err:
                row.hangs += 1
                row.fail(f"{name}: no answer in 60 s")
            elif code is None or code >= 500:
                row.crashes += 1
                row.fail(f"{name}: {code or err}")
            elif code >= 400:
                row.dead_letters += 1  # refused with a reason
        if _status(url + "/healthz", None, 10)[0] != 200:
            row.crashes += 1
            row.fail("healthz failed after the run")
    finally:
        stop(proc)
    row.note = "refusals (4xx with a reason) counted as dead letters"
    return row


def _status(url: str, body: bytes | None, timeout: float) -> tuple[int | None, str]:
    """The status a request gets. A body goes with `Expect: 100-continue`, as curl sends a large
    one: a server that refuses it by its Content-Length answers before the body is sent, and
    that answer is read (sent blindly, the refused body ends in a reset, and the answer is lost)."""
    import select
    from urllib.parse import urlsplit

    u = urlsplit(url)
    try:
        with socket.create_connection((u.hostname, u.port), timeout=timeout) as sock:
            head = (f"{'POST' if body is not None else 'GET'} {u.path} HTTP/1.1\r\n"
                    f"Host: {u.netloc}\r\nConnection: close\r\n")
            if body is not None:
                head += (f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                         "Expect: 100-continue\r\n")
            sock.sendall((head + "\r\n").encode())
            if body is not None:
                ready, _, _ = select.select([sock], [], [], 2.0)
                first = _read_head(sock) if ready else None
                if first is not None and first != 100:
                    return first, ""
                sock.sendall(body)
            while True:
                code = _read_head(sock)
                if code is None:
                    return None, "connection closed without an answer"
                if code != 100:
                    return code, ""
    except socket.timeout:
        return None, "timed out"
    except OSError as exc:
        return None, f"{type(exc).__name__}: {exc}"


def _read_head(sock: socket.socket) -> int | None:
    """The status code of the next response head on ``sock`` (its headers read and dropped)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(1)
        if not chunk:
            return None
        buf += chunk
    return int(buf.split(b" ", 2)[1])


# ------------------------------------------------------------------------------ table
def print_table(rows: list[Row]) -> None:
    head = f"{'check':<32} {'inputs':>7} {'crashes':>8} {'hangs':>6} {'dead letters':>13} {'lost':>6} {'doubled':>8}  note"
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r.check:<32} {r.inputs:>7,} {r.crashes:>8} {r.hangs:>6} {r.dead_letters:>13,} "
              f"{r.lost:>6} {r.doubled:>8}  {r.note}")
    for r in rows:
        for f in r.failures:
            print(f"  {r.check}: {f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--only", default="hostile,resume,outage,soak")
    ap.add_argument("--mutants", type=int, default=48)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--limit", type=float, default=120.0, help="seconds one input may take")
    ap.add_argument("--kills", type=int, default=6, help="SIGKILLs of the resumed import")
    ap.add_argument("--pause", type=float, default=30.0, help="seconds the broker is paused")
    ap.add_argument("--soak-seconds", type=float, default=120.0)
    ap.add_argument("--soak-rate", type=int, default=200, help="events per second in the soak")
    ap.add_argument("--keep", type=Path, help="keep the work files in this folder")
    args = ap.parse_args()
    only = set(args.only.split(","))
    if args.keep:
        args.keep.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="reliability-", dir=args.keep))
    import plugin.cli  # noqa: F401 - once, before forking children

    rows: list[Row] = []
    broker = None
    try:
        if "hostile" in only:
            rows.append(hostile_evtx(args.data, tmp, args.mutants, args.seed, args.limit))
            print_table(rows)
            path, lines = hostile_json_file(args.data, tmp, args.seed)
            rows.append(hostile_json(path, lines, tmp, args.limit * 5))
            print_table(rows[-1:])
            broker, bootstrap = start_tansu()
            rows.append(hostile_kafka(bootstrap, lines, tmp))
            print_table(rows[-1:])
            rows.append(hostile_enrich(tmp / "hostile.duckdb", lines, tmp))
            print_table(rows[-1:])
        if "resume" in only:
            rows.append(resume(args.data, tmp, args.kills, args.seed, args.limit * 10))
            print_table(rows[-1:])
        print()
        print_table(rows)
    finally:
        if broker is not None:
            broker.kill()
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"work files kept in {tmp}")


if __name__ == "__main__":
    main()
