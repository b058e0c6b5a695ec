"""Typed configuration: defaults < YAML file (--config) < SYSMON_BLT_* environment < CLI flags.

Unknown keys are errors (a typo in a security tool's config must not silently fall back to a
default), reported with the file or variable that holds them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from plugin.errors import UsageError
from plugin.memory import LAUNCHER_VARIABLES

ENV_PREFIX = "SYSMON_BLT_"


def _key(default: Any = MISSING, doc: str = "", *, factory: Any = MISSING) -> Any:
    """A configuration key: its default and what it means (the README's configuration reference
    is generated from these: `python -m plugin.config --reference`)."""
    return field(default=default, default_factory=factory, metadata={"doc": doc})


@dataclass
class Config:
    db: str = _key("sysmon-blt.duckdb", "The store commands read and write: a DuckDB file, or "
                   "a DuckLake shared by many consumers (`ducklake:postgres:dbname=soc "
                   "host=...`, `ducklake:sqlite:PATH`, `ducklake:PATH.ducklake`); `--db` "
                   "overrides it.")
    lake_data_path: str | None = _key(None, "A DuckLake's data files: a folder every instance "
                                      "reaches (NFS, a shared disk) or an object-storage URL. "
                                      "Needed to create a lake; an existing lake remembers it.")
    schemas_dir: str | None = _key(None, "A folder with your own copy of `schemas/sysmon` (the "
                                   "normalization rules); a bad file stops start-up with an error "
                                   "naming the file and key. Unset: the shipped schemas.")
    model: str | None = _key(None, "Model directory (`--model` overrides it). Unset: the model "
                             "shipped in the package.")
    batch_size: int = _key(5000, "Events per write transaction (`import --batch-size` overrides "
                           "it).")
    db_memory_limit: str = _key("256MB", "DuckDB's buffer pool, a cache of table blocks: the "
                                "per-event tables carry no key index (the writer enforces their "
                                "keys), so it does not bound how many events a file takes; "
                                "larger work spills to disk. Small by default beside the models: "
                                "the full OTRF import with both models peaked at 2,047 MiB summed "
                                "over the importer and its worker at 256MB, 2,338 at 512MB, at "
                                "2,284 against 2,336 events/s; at 256MB that store also fits, "
                                "rescores, reports and exports, and the 447k-event evaluation "
                                "runs. A query that needs more says which key to raise.")
    stream_db_memory_limit: str = _key("64MB", "`consume`: DuckDB's buffer pool. Smaller than "
                                       "an import's: a consumer's writes and lookups touch one "
                                       "batch's time range, and the pool fills to its limit over "
                                       "the first minutes, so its size is growth a consumer shows "
                                       "after start. Offline (the consumer's stages, 310,000 "
                                       "simulated events), 64MB ran as fast as 128MB (287 s "
                                       "against 285 s) and held DuckDB at ~46 MiB against ~97.")
    evtx_threads: int = _key(0, "pyevtx-rs worker threads for .evtx files; 0 lets it choose.")
    log_format: str = _key("auto", "`auto` (console on a terminal, JSON elsewhere), `console` or "
                           "`json`.")
    shadow_sample_rate: float = _key(1.0, "Share of distinct texts the shadow model (Linformer) "
                                     "also embeds and scores, picked by text hash so a text is "
                                     "always in or always out: 1.0 every event, 0.25 a quarter, "
                                     "0 shadow off.")
    stream_batch_size: int = _key(256, "`consume`: events per micro-batch.")
    stream_cache_texts: int = _key(10000, "`consume`: distinct canonical texts whose vectors and "
                                   "scores each model keeps in memory, and masked field values "
                                   "the normalizer keeps, least recently used out (an import "
                                   "keeps 200,000). A text seen again after it left is read "
                                   "back from the database and scored again; routine texts stay. "
                                   "About 3 KB per text for both models: the bound is what keeps "
                                   "a consumer's memory from growing with every new text.")
    stream_batch_ms: int = _key(100, "`consume`: how long (milliseconds) a micro-batch may wait "
                                "to fill; latency from produce to alert is about this plus the "
                                "models' time for one batch.")
    kafka: dict = _key(doc="librdkafka settings (SASL/SSL included) passed through as they are: "
                       "the one key whose contents are not checked. In the environment, one "
                       "variable per setting with dots as underscores "
                       "(`SYSMON_BLT_KAFKA_SASL_PASSWORD` sets `sasl.password`). Secret values "
                       "are never logged.", factory=dict)
    alert_quiet_minutes: int = _key(60, "An open alert's twins (the same canonical text) alert "
                                    "again only after this many minutes without one.")
    alert_rate_per_host: int = _key(20, "At most this many alert messages per host and minute on "
                                    "the alerts topic; beyond, one `rate_summary` message.")
    suppress: list = _key(doc="Rules whose matches never alert (kept as `suppressed`, in `import` "
                          "too): a list of `{text: REGEX, computer: REGEX, event_id: N, cluster: "
                          "N}`; every key given must match. YAML file only.", factory=list)
    retention_days: float = _key(0, "The consumer's retention: events (with their vectors and "
                                 "scores) older than this many days are pruned at start and "
                                 "hourly, as `prune --older-than` does; 0 keeps everything.")
    cold_start: str = _key("case", "Scoring without a fit: `case` calibrates the shipped model's "
                           "scores on the run's own events (a streaming quantile with stacking, "
                           "see *Clusters, scores and outliers*); `shipped` keeps the training "
                           "corpus's threshold (more flags; for a small capture where a quantile "
                           "means little).")
    learning_hours: float = _key(24, "The consumer's learning period on a store with no fit: "
                                 "events are scored and stored, but only scores of at least "
                                 "`learning_bar` alert until both `learning_hours` and "
                                 "`learning_events` are reached; then it fits on them (holding "
                                 "back what it flagged) and scores with the fit.")
    learning_events: int = _key(100_000, "Events the learning period needs (see "
                                "`learning_hours`); 0 turns the period, and its automatic fit, "
                                "off.")
    learning_bar: float = _key(2.0, "The lowest score that alerts during the learning period "
                               "(at least 1.0).")
    fit_poll_seconds: float = _key(30, "`consume`: how often (seconds) a consumer asks the "
                                   "store for a newer fit of its models (made by `sysmon-blt "
                                   "fit` or another instance sharing a DuckLake) and switches "
                                   "to it between batches, without a restart; a fit picked up "
                                   "also ends a learning period. 0 turns it off (a new fit then "
                                   "needs a restart).")
    workers: int | str = _key("auto", "Embedding workers (spawned processes holding the models): "
                              "`auto` = one per CUDA device, else one CPU worker using every "
                              "core (`consume`: every core but one, left to the consumer); 0 = "
                              "embed in the command's own process; N = N workers.")
    incident_window_minutes: float = _key(60.0, "Incidents (`sysmon-blt incidents`, the primary "
                                          "model's outliers grouped by host and process tree): "
                                          "an incident stays open while its outliers come less "
                                          "than this many minutes apart, and takes in every "
                                          "event of its tree less than this long before its "
                                          "first or after its latest outlier (a quieter gap "
                                          "starts a new incident of the same root).")
    # the HTTP service (`serve`, `consume --serve`)
    service_token: str | None = _key(None, "The HTTP service (`serve`, `consume --serve`): when "
                                     "set, every route but /healthz asks for it (API clients as "
                                     "`Authorization: Bearer`, the triage page once on its login "
                                     "form): the page can mark alerts, and a service moved off "
                                     "loopback must not let anyone who reaches the port do so.")
    service_max_body: int = _key(1_048_576, "The HTTP service's largest request body in bytes; a "
                                 "larger one is refused (413) before it is read whole, so one "
                                 "client cannot fill the consumer's memory.")
    service_report_dir: str | None = _key(None, "The folder of a `report --out DIR`, linked from "
                                          "the triage page.")

    def validate(self, origin: str) -> None:
        if not isinstance(self.batch_size, int) or self.batch_size < 1:
            raise UsageError(f"{origin}: batch_size must be a positive integer")
        if not isinstance(self.evtx_threads, int) or self.evtx_threads < 0:
            raise UsageError(f"{origin}: evtx_threads must be an integer >= 0")
        if self.workers != "auto" and (isinstance(self.workers, bool)
                                       or not isinstance(self.workers, int) or self.workers < 0):
            raise UsageError(f"{origin}: workers must be 'auto' or an integer >= 0")
        if not 0 < self.incident_window_minutes < 1e6:  # also refuses nan and inf
            raise UsageError(f"{origin}: incident_window_minutes must be a positive number "
                             "of minutes")
        if self.learning_hours < 0 or self.learning_events < 0 or self.learning_bar < 1.0:
            raise UsageError(f"{origin}: learning_hours and learning_events must be >= 0 and "
                             "learning_bar >= 1.0")
        if self.cold_start not in ("case", "shipped"):
            raise UsageError(f"{origin}: cold_start must be 'case' or 'shipped'")
        if not 0 <= self.fit_poll_seconds < 1e9:  # also refuses nan and inf
            raise UsageError(f"{origin}: fit_poll_seconds must be a number of seconds >= 0 "
                             "(0 turns the fit watcher off)")
        if self.retention_days < 0:
            raise UsageError(f"{origin}: retention_days must be >= 0 (0 keeps everything)")
        if not 0.0 <= self.shadow_sample_rate <= 1.0:
            raise UsageError(f"{origin}: shadow_sample_rate must be between 0 and 1")
        if not isinstance(self.stream_batch_size, int) or self.stream_batch_size < 1:
            raise UsageError(f"{origin}: stream_batch_size must be a positive integer")
        if not isinstance(self.stream_cache_texts, int) or self.stream_cache_texts < 1000:
            raise UsageError(f"{origin}: stream_cache_texts must be an integer >= 1000")
        if not isinstance(self.stream_batch_ms, int) or self.stream_batch_ms < 1:
            raise UsageError(f"{origin}: stream_batch_ms must be a positive integer")
        if not isinstance(self.alert_quiet_minutes, int) or self.alert_quiet_minutes < 0:
            raise UsageError(f"{origin}: alert_quiet_minutes must be an integer >= 0")
        if not isinstance(self.alert_rate_per_host, int) or self.alert_rate_per_host < 1:
            raise UsageError(f"{origin}: alert_rate_per_host must be a positive integer")
        if not all(isinstance(r, dict) for r in self.suppress):
            raise UsageError(f"{origin}: suppress must be a list of rules (mappings); see README")
        if not isinstance(self.kafka, dict):
            raise UsageError(f"{origin}: kafka must be a mapping of librdkafka settings")
        if not isinstance(self.service_max_body, int) or self.service_max_body < 1:
            raise UsageError(f"{origin}: service_max_body must be a positive number of bytes")
        if self.service_token is not None and not self.service_token.strip():
            # an empty token would read as "protected" in the config and protect nothing
            raise UsageError(f"{origin}: service_token is empty; leave it unset to serve "
                             "without one")
        if self.log_format not in ("auto", "console", "json"):
            raise UsageError(f"{origin}: log_format must be auto, console or json")

    def digest(self) -> str:
        """Hash of what changes the stored text (schemas, model): recorded per import."""
        from plugin.resources import schemas_dir

        sdir = Path(self.schemas_dir) if self.schemas_dir else schemas_dir() / "sysmon"
        h = hashlib.sha256(json.dumps({"model": self.model}, sort_keys=True).encode())
        for f in sorted(sdir.glob("*.yaml")):
            h.update(f.name.encode())
            h.update(f.read_bytes())
        return h.hexdigest()[:16]


_TYPES = {f.name: f.type for f in fields(Config)}


def _coerce(key: str, value: Any, origin: str) -> Any:
    kind = str(_TYPES[key])
    if kind == "list":
        if not isinstance(value, list):
            raise UsageError(f"{origin}: {key} must be a list")
        return value
    if kind == "dict":
        if not isinstance(value, dict):
            raise UsageError(f"{origin}: {key} must be a mapping")
        return {str(k): v for k, v in value.items()}
    if kind == "int | str" and value == "auto":  # a count that may be left to the machine
        return value
    for name, cast, noun in (("float", float, "a number"), ("int", int, "an integer")):
        if name not in kind:
            continue
        if isinstance(value, bool):
            raise UsageError(f"{origin}: {key} must be {noun}")
        try:
            return cast(value)
        except (TypeError, ValueError) as exc:
            raise UsageError(f"{origin}: {key} must be {noun}, got {value!r}") from exc
    if value is not None and not isinstance(value, str):
        raise UsageError(f"{origin}: {key} must be a string, got {value!r}")
    return value


def _apply(cfg: Config, values: Mapping[str, Any], origin: str) -> None:
    for key, value in values.items():
        if key not in _TYPES:
            raise UsageError(f"{origin}: unknown key {key!r} (known: {', '.join(sorted(_TYPES))})")
        setattr(cfg, key, _coerce(key, value, f"{origin}"))


def load_config(path: str | None, overrides: Mapping[str, Any],
                environ: Mapping[str, str] | None = None) -> Config:
    cfg = Config()
    if path:
        p = Path(path)
        try:
            doc = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except OSError as exc:
            raise UsageError(f"--config {path}: cannot read: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise UsageError(f"--config {path}: not valid YAML: {exc}") from exc
        if not isinstance(doc, dict):
            raise UsageError(f"--config {path}: top level must be a mapping")
        _apply(cfg, doc, f"config file {path}")
    env = os.environ if environ is None else environ
    kafka_prefix = ENV_PREFIX + "KAFKA_"
    kafka_env = {k[len(kafka_prefix):].lower().replace("_", "."): v for k, v in env.items()
                 if k.startswith(kafka_prefix)}
    if kafka_env:
        cfg.kafka = {**cfg.kafka, **kafka_env}
    # the launcher's variables (the allocator) act before Python starts, not on the config
    env_values = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
                  if k.startswith(ENV_PREFIX) and not k.startswith(kafka_prefix)
                  and k not in LAUNCHER_VARIABLES}
    for key in env_values:
        if key not in _TYPES:
            raise UsageError(f"environment: unknown variable {ENV_PREFIX}{key.upper()}")
    _apply(cfg, env_values, "environment")
    _apply(cfg, {k: v for k, v in overrides.items() if v is not None}, "command line")
    cfg.validate("configuration")
    return cfg


# ---- the configuration reference (README.md, between the markers below) ----

REFERENCE_START = "<!-- config-reference:start -->"
REFERENCE_END = "<!-- config-reference:end -->"


def env_var(name: str) -> str | None:
    """The environment variable that sets key ``name``, as `load_config` reads it; None for the
    keys only a YAML file can hold (lists, mappings other than `kafka`)."""
    kind = str(_TYPES[name])
    if name == "kafka":
        return f"{ENV_PREFIX}KAFKA_<SETTING>"
    if kind in ("list", "dict"):
        return None
    return ENV_PREFIX + name.upper()


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def reference_markdown() -> str:
    """The configuration reference as a markdown table (key, environment variable, default,
    meaning), from the fields of `Config`; a key without a description is an error."""
    rows = [REFERENCE_START,
            "<!-- generated from plugin/config.py by `python -m plugin.config --reference "
            "--write README.md`: edit the descriptions there -->",
            "",
            "| key | environment variable | default | meaning |",
            "|---|---|---|---|"]
    for f in fields(Config):
        doc = f.metadata.get("doc", "").strip()
        if not doc:
            raise ValueError(f"config key {f.name!r} has no description: give it one with "
                             "_key(default, doc) in plugin/config.py")
        default = f.default if f.default is not MISSING else f.default_factory()
        shown = ("unset" if default is None else f"`{default}`" if isinstance(default, str)
                 else f"`{json.dumps(default)}`")
        env = env_var(f.name)
        rows.append(f"| `{f.name}` | {f'`{env}`' if env else 'YAML only'} | {_cell(shown)} | "
                    f"{_cell(doc)} |")
    rows.append(REFERENCE_END)
    return "\n".join(rows) + "\n"


def write_reference(path: str | Path) -> bool:
    """Replace the block between the markers in ``path`` (the README) with the reference;
    True when the file changed."""
    p = Path(path)
    text = p.read_text(encoding="utf-8")
    start, end = text.find(REFERENCE_START), text.find(REFERENCE_END)
    if start < 0 or end < start:
        raise UsageError(f"{path}: no {REFERENCE_START} ... {REFERENCE_END} block")
    rest = text[end + len(REFERENCE_END):]
    new = text[:start] + reference_markdown() + rest.removeprefix("\n")
    if new != text:
        p.write_text(new, encoding="utf-8")
    return new != text


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(prog="python -m plugin.config",
                                 description="Print (or write into a file's marked block) the "
                                 "configuration reference generated from the config model.")
    ap.add_argument("--reference", action="store_true", required=True,
                    help="the markdown table of every key")
    ap.add_argument("--write", metavar="FILE",
                    help="replace the block between the config-reference markers in FILE")
    ns = ap.parse_args()
    if ns.write:
        print(f"{ns.write}: {'updated' if write_reference(ns.write) else 'already up to date'}")
    else:
        print(reference_markdown(), end="")
