"""Synthetic but realistic Windows Sysmon events from a small simulated fleet.

For demos, load tests and test fixtures. A fleet of `hosts` machines of the domain
`corp.example` (a few users each) boots, runs services and user programs with realistic parent
chains, and emits process creation (1), network (3), process terminate (5), image load (7),
process access (10), file create (11), registry (12/13) and DNS (22) events with full Sysmon field
sets. Events are generated lazily (constant memory) and deterministically from `seed`
(`random.Random(seed)`, no wall clock).

Every record carries its label in a side field that never reaches the canonical text:
`"sysmon_blt_sim": {"anomaly": bool, "scenario": "normal" | "novel" | <anomaly name>,
"span": <the anomalous field value> | None}`. `novel` marks never-seen benign behaviour
(anomaly false). Anomaly scenarios: see `ANOMALY_SCENARIOS`; each injects exactly one labelled
event, so the anomaly share of the stream is `anomaly_rate` in expectation; `span` is always one
of that event's field values verbatim.

The same `SimEvent` renders in every shape (`render(ev, shape)`): `winlogbeat8`, `nxlog`,
`evtxjson`, or `mixed` (winlogbeat8 or nxlog at random per event).

Layout (each module says why it exists): `event` (the event and its label), `catalog` (static
tables), `fleet` (users, hosts, process tables), `sysmon` (fields of each event type),
`programs` (process launches and the boot), `routine` (normal activity), `scenarios`
(anomalies and novelty), `engine` (the time-ordered stream), `shapes` (rendering) and `sinks`
(file, Kafka).
"""

from __future__ import annotations

from .catalog import CHANNEL, DOMAIN, DOMAIN_FQDN, IMAGES
from .engine import DEFAULT_START, generate
from .event import LABEL_KEY, SimEvent
from .shapes import PROVIDER, PROVIDER_GUID, SHAPES, render, simulate_records
from .scenarios import ANOMALY_SCENARIOS
from .sinks import Tally, produce_kafka, write_jsonl

__all__ = [
    "SimEvent", "generate", "render", "simulate_records", "write_jsonl", "produce_kafka",
    "SHAPES", "ANOMALY_SCENARIOS", "LABEL_KEY", "Tally",
]
# also importable, as before the split: CHANNEL, DOMAIN, DOMAIN_FQDN, DEFAULT_START, IMAGES,
# PROVIDER, PROVIDER_GUID
