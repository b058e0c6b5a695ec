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
#: fields of an NXLog record that say which event it is, left alone when content is made long
IDENTITY_KEYS = frozenset({"EventID", "Channel", "SourceName", "ProviderGuid", "Hostname",
                           "TimeCreated", "@timestamp", "UtcTime", "EventTime", "EventType",
                           "Level", "Keywords", "Task", "RecordNumber", "ProcessGuid"})
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
    d = doc()  # every content field long words: a canonical text past the BLT's 1,024 bytes
    for key, value in list(d.items()):
        if isinstance(value, str) and key not in IDENTITY_KEYS:
            d[key] = " ".join(f"part{rng.randrange(10**6)}" for _ in range(400))
    out.append(("canonical text of several KB", dumps(d)))
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
    con = duckdb.connect(str(db), read_only=True)
    try:  # over-long texts: embedded in part with a flag, the record itself kept whole
        long_texts, flagged = con.execute(
            "SELECT count(*), count(json_extract(a.detail, '$.truncated_for_embedding')) "
            "FROM events e JOIN assignments a USING (event_key) "
            "WHERE a.model = 'blt' AND octet_length(encode(e.normalized)) > 1024").fetchone()
        biggest = con.execute("SELECT max(octet_length(encode(raw))) FROM events").fetchone()[0]
    finally:
        con.close()
    if flagged != long_texts:
        row.fail(f"{long_texts - flagged} texts over 1,024 bytes embedded without the flag")
    if not long_texts:
        row.fail("no canonical text past 1,024 bytes: the truncation flag went untested")
    row.note = (f"{hostile} hostile among {len(lines) - hostile} real lines; embedded, scored, "
                f"{time.monotonic() - t0:.0f} s; {flagged} of {long_texts} texts over 1,024 bytes "
                f"flagged as cut for embedding; largest record stored whole: {biggest or 0:,} bytes")
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
    """One uninterrupted import; then the same import SIGKILLed at random moments and run again
    into one database until a run finishes, compared with the uninterrupted one (the same events
    and dead letters, none doubled, every event scored); again with a new database until
    ``kills`` kills landed; then a rerun where every file is finished times the skip."""
    row = Row("import SIGKILLed and rerun")
    rng = random.Random(seed)
    folder = resume_inputs(data, tmp, 15_000)
    ref_db = tmp / "resume-ref.duckdb"
    args = ["import", str(folder), "-q", "--json", "--db"]
    t0 = time.monotonic()
    rc, hung = fork_cli(args + [str(ref_db)], limit, tmp / "resume-ref.log")
    full = time.monotonic() - t0
    if rc != 0:
        row.crashes += 1
        row.fail(f"uninterrupted import: exit {rc}, hung {hung}; see {tmp / 'resume-ref.log'}")
        return row
    ref = store_digest(ref_db)
    landed, rounds, run, db = 0, 0, 0, None
    killed_at: list[str] = []
    while landed < kills or db is not None:
        if db is None:
            rounds += 1
            db = tmp / f"resume-{rounds}.duckdb"
        done = store_digest(db)["events"] / max(1, ref["events"]) if db.exists() else 0.0
        # somewhere in what is left to do (a rerun skips the finished files first); once
        # enough kills landed, the round's last run goes to the end
        at = rng.uniform(0.5, 3.0 + full * (1.0 - done)) if landed < kills else limit
        log = tmp / f"resume-run-{run}.log"
        rc, hung = fork_cli(args + [str(db)], at, log)
        run += 1
        row.inputs += 1
        if hung and at < limit:
            landed += 1
            killed_at.append(f"{at:.1f}")
            continue
        if rc != 0:
            row.crashes += int(not hung)
            row.hangs += int(hung)
            row.fail(f"run {run}: exit {rc}; see {log}")
            return row
        judge_resumed(row, ref, store_digest(db), f"round {rounds}")
        if landed >= kills:
            break
        db = None
    t1 = time.monotonic()
    rc, _ = fork_cli(args + [str(db)], limit, tmp / "resume-skip.log")
    skip = time.monotonic() - t1
    row.note = (f"{ref['events']:,} events in {ref['complete']} inputs; {run} runs in {rounds} "
                f"rounds, killed at {', '.join(killed_at)} s of a {full:.0f} s import; rerun "
                f"over finished files {skip:.1f} s (exit {rc})")
    return row


def judge_resumed(row: Row, ref: dict, got: dict, where: str) -> None:
    """A resumed import against the uninterrupted one."""
    row.dead_letters += len(got["dead"])
    row.lost += len(ref["keys"] - got["keys"])
    row.doubled += ((got["events"] - len(got["keys"]))
                    + (got["assignments"][0] - got["assignments"][1])
                    + max(0, len(got["dead"]) - len(ref["dead"])))
    if ref["keys"] != got["keys"]:
        row.fail(f"{where}: {len(ref['keys'] - got['keys'])} events of the uninterrupted run "
                 f"missing, {len(got['keys'] - ref['keys'])} extra")
    if got["dead"] != ref["dead"]:
        row.fail(f"{where}: dead letters differ: {len(ref['dead'])} uninterrupted, "
                 f"{len(got['dead'])} resumed")
    if got["assignments"][1] != ref["assignments"][1]:
        row.fail(f"{where}: {ref['assignments'][1] - got['assignments'][1]} fewer (event, model) "
                 "scores than the uninterrupted run")


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
    ok = wait_for(lambda: all_committed(bootstrap, "hostile", "hostile", len(sent))
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


# ------------------------------------------------------------------------------ Kafka runs
class Produced:
    """Simulated events produced to a topic; remembers where each one landed (partition,
    offset), from the broker's delivery reports: the oracle of a streaming check."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, seed: int) -> None:
        from confluent_kafka import Producer
        from confluent_kafka.admin import AdminClient, NewTopic

        from plugin import simulate

        admin = AdminClient({"bootstrap.servers": bootstrap})
        admin.create_topics([NewTopic(topic, partitions, 1)])[topic].result(30)
        self.topic = topic
        self.at: set[tuple[str, int]] = set()
        self.failed = 0
        self.records = simulate.simulate_records(10_000_000, seed=seed, novel_rate=0.02)
        self.producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5,
                                  "message.timeout.ms": 600_000})

    def _delivered(self, err, msg) -> None:
        if err is None:
            self.at.add((f"kafka:{msg.topic()}/{msg.partition()}", msg.offset()))
        else:
            self.failed += 1

    def send(self, n: int) -> None:
        for _ in range(n):
            rec = next(self.records)
            self.producer.produce(self.topic, key=rec["winlog"]["computer_name"].encode(),
                                  value=json.dumps(rec).encode(), on_delivery=self._delivered)
            self.producer.poll(0)

    def flush(self, timeout: float = 120) -> None:
        self.producer.flush(timeout)

    def judge(self, row: Row, ev: list[tuple], dl: list[tuple]) -> None:
        """Lost: a delivered message neither stored nor a dead letter; doubled: one stored twice.
        ``ev``, ``dl``: stored events and dead letters, each row beginning (source, position)."""
        stored = [(r[0], r[1]) for r in ev if r[0].startswith(f"kafka:{self.topic}/")]
        dead = {(d[0], d[1]) for d in dl}
        missing = self.at - set(stored) - dead
        row.inputs = len(self.at)
        row.lost += len(missing) + self.failed
        row.doubled += len(stored) - len(set(stored))
        row.dead_letters += len(dead)
        if missing:
            row.fail(f"{len(missing)} delivered messages neither stored nor dead letters, "
                     f"e.g. {sorted(missing)[:3]}")
        if self.failed:
            row.fail(f"{self.failed} messages the broker never took")


def start_consumer(bootstrap: str, topic: str, group: str, db: Path, log: Path,
                   *extra: str) -> subprocess.Popen:
    return subprocess.Popen(consume_cmd(bootstrap, topic, db, group, *extra), env=consumer_env(),
                            stdout=log.open("wb"), stderr=subprocess.STDOUT, cwd=ROOT,
                            start_new_session=True)


def all_committed(bootstrap: str, topic: str, group: str, n: int) -> bool:
    from stream import committed

    try:
        return sum(committed(bootstrap, topic, group).values()) >= n
    except Exception:  # noqa: BLE001 - the broker paused or busy: not yet
        return False


def settle(row: Row, procs: list[subprocess.Popen], bootstrap: str, topic: str, group: str,
           n: int, logs: str, what: str) -> float:
    """Wait until the group committed ``n`` messages (or a consumer died), then stop the
    consumers: a crash for each one that died or did not exit 0 at SIGTERM, a hang when they did
    not catch up in 300 s (``what`` says after what). Returns the seconds waited."""
    t0 = time.monotonic()
    caught = wait_for(lambda: all_committed(bootstrap, topic, group, n)
                      or any(p.poll() is not None for p in procs), 300, 1.0)
    took = time.monotonic() - t0
    alive = [p.poll() is None for p in procs]
    for p, was_alive in zip(procs, alive):
        rc = stop(p)
        if not was_alive or rc != 0:
            row.crashes += 1
            row.fail(f"consume exit {p.returncode} (alive until stopped: {was_alive}); see {logs}")
    if not caught:
        row.hangs += 1
        row.fail(f"not caught up 300 s {what}; see {logs}")
    return took


# ------------------------------------------------------------------------------ outages
def outage_broker(bootstrap: str, broker: subprocess.Popen, tmp: Path, pause: float,
                  seed: int) -> Row:
    """The broker paused (SIGSTOP) under a running consumer while events keep coming, then
    resumed (SIGCONT): the consumer waits, reconnects and catches up; nothing lost."""
    row = Row(f"broker paused {pause:.0f} s")
    prod = Produced(bootstrap, "outage", 2, seed)
    db = tmp / "outage.duckdb"
    log = tmp / "outage.log"
    proc = start_consumer(bootstrap, "outage", "outage", db, log)
    prod.send(2000)
    prod.flush()
    if not wait_for(lambda: all_committed(bootstrap, "outage", "outage", 2000)
                    or proc.poll() is not None, 300, 1.0) or proc.poll() is not None:
        row.crashes += int(proc.poll() is not None)
        row.fail(f"the consumer did not take the first 2,000 events; see {log}")
        stop(proc)
        return row
    os.kill(broker.pid, signal.SIGSTOP)
    t_stop = time.monotonic()
    try:
        while time.monotonic() - t_stop < pause:  # events keep arriving at the producer
            prod.send(50)
            time.sleep(1.0)
    finally:
        os.kill(broker.pid, signal.SIGCONT)
    t_cont = time.monotonic()
    prod.flush(300)
    n = len(prod.at)
    took = time.monotonic() - t_cont + settle(row, [proc], bootstrap, "outage", "outage", n,
                                             str(log), "after the broker came back")
    prod.judge(row, *db_rows(db))
    row.note = (f"{n:,} events, {n - 2000:,} sent during the pause; caught up {took:.0f} s "
                "after SIGCONT")
    return row


def hold_lock(db: Path) -> int:
    """A process that holds ``db`` open for writing (DuckDB's file lock) until killed."""
    ready_r, ready_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(ready_r)
        con = duckdb.connect(str(db))
        os.write(ready_w, b"1")
        time.sleep(3600)
        con.close()
        os._exit(0)
    os.close(ready_w)
    os.read(ready_r, 1)
    os.close(ready_r)
    return pid


def outage_locked(data: Path, tmp: Path, bootstrap: str | None) -> Row:
    """The database file held by another process: `import` and `consume` exit 1 with an error
    naming the file, and leave it as it was."""
    row = Row("database held by another process")
    db = tmp / "locked.duckdb"
    evtx = next(iter(sysmon_evtx_files(data, 1)))
    fork_cli(["import", str(evtx), "--db", str(db), "--no-embed", "-q"], 120, tmp / "locked-0.log")
    before = store_digest(db)
    holder = hold_lock(db)
    try:
        runs = [("import", ["import", str(evtx.parent), "--db", str(db), "-q"])]
        if bootstrap:
            runs.append(("consume", ["consume", "--bootstrap", bootstrap, "--topic", "outage",
                                     "--group", "locked", "--db", str(db), "-q"]))
        for name, args in runs:
            log = tmp / f"locked-{name}.log"
            rc, hung = fork_cli(args, 120, log)
            row.inputs += 1
            said = log.read_text(errors="replace")
            if hung:
                row.hangs += 1
                row.fail(f"{name}: no answer in 120 s")
            elif rc != 1 or str(db) not in said:
                row.crashes += 1
                row.fail(f"{name}: exit {rc}, names the file: {str(db) in said}; see {log}")
    finally:
        os.kill(holder, signal.SIGKILL)
        os.waitpid(holder, 0)
    after = store_digest(db)
    if after != before:
        row.doubled += max(0, after["events"] - before["events"])
        row.fail("the file changed while another process held it")
    row.note = "exit 1, the file named, the file unchanged"
    return row


def mount_tmpfs(where: Path, size_mb: int) -> str | None:
    """A small filesystem to fill; the reason when this process may not mount one."""
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0:
        return "not root: cannot mount a small filesystem"
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size_mb}m", "tmpfs", str(where)],
                       capture_output=True, text=True)
    return None if r.returncode == 0 else f"mount failed: {r.stderr.strip()}"


def outage_disk_full(bootstrap: str, tmp: Path, seed: int) -> Row:
    """The database on a filesystem that fills up under a consumer: a clear error, exit 1, no
    offset committed past what was stored; after room is made, a restart stores the rest:
    nothing lost, nothing doubled."""
    row = Row("disk full under the consumer")
    fs = tmp / "small-fs"
    why = mount_tmpfs(fs, 24)
    if why:
        row.note = f"skipped: {why}"
        return row
    try:
        prod = Produced(bootstrap, "diskfull", 2, seed + 1)
        db = fs / "full.duckdb"
        log = tmp / "diskfull-0.log"
        proc = start_consumer(bootstrap, "diskfull", "diskfull", db, log, "--no-embed")
        sent = 0
        while proc.poll() is None and sent < 200_000:
            prod.send(2000)
            sent += 2000
            prod.flush()
            time.sleep(0.5)
        if proc.poll() is None:  # 200,000 events and the filesystem still not full
            stop(proc)
            row.note = "skipped: the filesystem never filled"
            return row
        rc = proc.returncode
        said = log.read_text(errors="replace")
        if rc != 1 or "space" not in said.lower():
            row.crashes += 1
            row.fail(f"consume on a full disk: exit {rc}, says why: {'space' in said.lower()}; see {log}")
        from stream import committed

        done = committed(bootstrap, "diskfull", "diskfull")
        subprocess.run(["mount", "-o", "remount,size=400m", str(fs)], check=True)
        ev, _ = db_rows(db)
        have = {(s, p) for s, p, *_ in ev}
        ahead = [(p, off) for p, off in done.items()
                 if off and (f"kafka:diskfull/{p}", off - 1) not in have]
        if ahead:
            row.lost += len(ahead)
            row.fail(f"offsets committed past what was stored: {ahead}")
        stored_then = len(ev)
        log = tmp / "diskfull-1.log"
        proc = start_consumer(bootstrap, "diskfull", "diskfull", db, log, "--no-embed")
        settle(row, [proc], bootstrap, "diskfull", "diskfull", len(prod.at), str(log),
               "after the restart with room")
        prod.judge(row, *db_rows(db))
        row.note = (f"24 MB tmpfs filled after {stored_then:,} events (exit {rc}); restarted "
                    "after a remount to 400 MB")
    finally:
        subprocess.run(["umount", "-l", str(fs)], capture_output=True)
    return row


def outage_catalog(bootstrap: str, tmp: Path, pause: float, seed: int) -> Row:
    """Two consumers on one DuckLake whose PostgreSQL catalog stops for ``pause`` seconds while
    events keep coming: they wait, resume, and every event is stored once."""
    row = Row(f"lake catalog stopped {pause:.0f} s")
    sys.path.insert(0, str(ROOT / "tests"))
    from pg import PgServer, unavailable

    why = unavailable()
    if why:
        row.note = f"skipped: {why}"
        return row
    with PgServer() as pg:
        db = "ducklake:postgres:" + pg.create_database("outage")
        env = {**consumer_env(), "SYSMON_BLT_LAKE_DATA_PATH": str(tmp / "lake-data")}
        prod = Produced(bootstrap, "lake", 2, seed + 3)
        procs = []
        for i in range(2):
            log = tmp / f"lake-{i}.log"
            cmd = [c for c in consume_cmd(bootstrap, "lake", db, "lake", "--no-embed") if c != "-q"]
            procs.append(subprocess.Popen(cmd,  # warnings kept: the outage's log lines
                                          env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                          cwd=ROOT, start_new_session=True))
        prod.send(2000)
        prod.flush()
        ok = wait_for(lambda: all_committed(bootstrap, "lake", "lake", 2000)
                      or any(p.poll() is not None for p in procs), 300, 1.0)
        if not ok or any(p.poll() is not None for p in procs):
            row.crashes += 1
            row.fail(f"the consumers did not take the first 2,000 events; see {tmp}/lake-*.log")
        else:
            pg.halt()
            t0 = time.monotonic()
            try:
                while time.monotonic() - t0 < pause:
                    prod.send(50)
                    prod.producer.poll(0)
                    time.sleep(1.0)
            finally:
                pg.resume()
            t_back = time.monotonic()
            prod.flush()
            n = len(prod.at)
            took = time.monotonic() - t_back + settle(
                row, procs, bootstrap, "lake", "lake", n, f"{tmp}/lake-*.log",
                "after the catalog came back")
            waited = sum((tmp / f"lake-{i}.log").read_text(errors="replace")
                         .count("lake_catalog_unreachable") for i in range(2))
            row.note = (f"{n:,} events by 2 consumers, {n - 2000:,} during the outage; "
                        f"{waited} waits logged; caught up {took:.0f} s after PostgreSQL was back")
        for p in procs:  # after a failed start (`settle` stopped them otherwise)
            if p.poll() is None:
                stop(p)
        from plugin.store import open_store

        store = open_store(db, read_only=True, data_path=str(tmp / "lake-data"))
        try:
            ev = store._run("SELECT source, position FROM events")
            dl = store._run("SELECT source, position FROM dead_letters")
        finally:
            store.close()
        prod.judge(row, ev, dl)
    return row


# ------------------------------------------------------------------------------ soak
def fd_count(pid: int) -> int | None:
    """Open files of a process and its descendants."""
    from stream import _children

    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += len(os.listdir(f"/proc/{p}/fd"))
        except OSError:
            if p == pid:
                return None
            continue
        todo.extend(_children(p))
    return total


def soak(bootstrap: str, tmp: Path, seconds: float, rate: int, seed: int) -> Row:
    """Simulated events at a steady rate through a consumer (with its models) for `seconds`:
    resident memory, open files and lag sampled every 10 s; produced = stored at the end."""
    from stream import lag

    row = Row(f"soak {seconds / 60:.0f} min at {rate}/s")
    prod = Produced(bootstrap, "soak", 2, seed + 2)
    db = tmp / "soak.duckdb"
    log = tmp / "soak.log"
    proc = start_consumer(bootstrap, "soak", "soak", db, log)
    prod.send(1000)  # warm-up: the models load, the group joins
    prod.flush()
    if not wait_for(lambda: all_committed(bootstrap, "soak", "soak", 1000)
                    or proc.poll() is not None, 300, 1.0) or proc.poll() is not None:
        row.crashes += 1
        row.fail(f"the consumer did not take the warm-up; see {log}")
        stop(proc)
        return row
    samples = []  # (seconds, rss MB, open files, lag)
    t0 = time.monotonic()
    next_sample = t0
    sent = 0
    while (now := time.monotonic()) - t0 < seconds and proc.poll() is None:
        due = int((now - t0) * rate) - sent
        if due > 0:
            prod.send(due)
            sent += due
        if now >= next_sample:
            prod.producer.flush(5)
            rss = rss_mb(proc.pid)
            samples.append((now - t0, sum(rss) if rss else None, fd_count(proc.pid),
                            lag(bootstrap, "soak", "soak", len(prod.at))))
            next_sample += 10
        time.sleep(0.02)
    prod.flush()
    settle(row, [proc], bootstrap, "soak", "soak", len(prod.at), str(log), "after the last event")
    prod.judge(row, *db_rows(db))
    steady = [s for s in samples if s[0] >= min(300, seconds / 4)] or samples
    rss0, rss1 = steady[0][1], samples[-1][1]
    fd0, fd1 = steady[0][2], samples[-1][2]
    lags = [s[3] for s in samples]
    grow = (rss1 - rss0) / rss0 * 100 if rss0 and rss1 else float("nan")
    if grow > 10:
        row.fail(f"resident memory grew {grow:.0f}% ({rss0:.0f} -> {rss1:.0f} MB)")
    if fd0 is not None and fd1 is not None and fd1 > fd0 + 5:
        row.fail(f"open files grew {fd0} -> {fd1}")
    half = lags[len(lags) // 2:]
    if len(half) > 2 and half[-1] > max(rate, 2 * half[0]):
        row.fail(f"lag grew: {half}")
    row.note = (f"RSS {rss0:.0f} -> {rss1:.0f} MB ({grow:+.1f}% after warm-up), open files "
                f"{fd0} -> {fd1}, lag max {max(lags):,} end {lags[-1]:,}")
    (tmp / "soak-samples.json").write_text(json.dumps(samples))
    return row


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
    import plugin.cli  # noqa: F401 - imported once, before forking children

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
        if only & {"outage", "soak"} and broker is None:
            broker, bootstrap = start_tansu()
        if "outage" in only:
            rows.append(outage_broker(bootstrap, broker, tmp, args.pause, args.seed))
            print_table(rows[-1:])
            rows.append(outage_locked(args.data, tmp, bootstrap))
            print_table(rows[-1:])
            rows.append(outage_disk_full(bootstrap, tmp, args.seed))
            print_table(rows[-1:])
            rows.append(outage_catalog(bootstrap, tmp, args.pause, args.seed))
            print_table(rows[-1:])
        if "soak" in only:
            rows.append(soak(bootstrap, tmp, args.soak_seconds, args.soak_rate, args.seed))
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
