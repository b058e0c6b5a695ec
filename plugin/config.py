"""Typed configuration: defaults < YAML file (--config) < SYSMON_BLT_* environment < CLI flags.

Unknown keys are errors (a typo in a security tool's config must not silently fall back to a
default), reported with the file or variable that holds them.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping

import yaml

from plugin.errors import UsageError

ENV_PREFIX = "SYSMON_BLT_"


@dataclass
class Config:
    db: str = "sysmon-blt.duckdb"  # the DuckDB file commands read and write
    schemas_dir: str | None = None  # a user's own copy of schemas/sysmon (default: shipped)
    model: str | None = None  # model directory (default: the one shipped in the package)
    batch_size: int = 5000  # events per write transaction
    # DuckDB's buffer pool. Small by default so an import with the models stays near 1.5 GiB of
    # RSS (the full OTRF import needs ~300 MB of it; 256MB ran out at its end); a database of
    # many millions of events needs more for its key indexes: the error says so
    db_memory_limit: str = "512MB"
    evtx_threads: int = 0  # pyevtx-rs worker threads; 0 lets it choose
    log_format: str = "auto"  # auto (console on a terminal, JSON elsewhere), console, json
    # share of distinct texts the shadow model (Linformer) also embeds and scores, picked by text
    # hash; 1.0 = every event (the default), 0 = shadow off
    shadow_sample_rate: float = 1.0
    # the streaming consumer: events per micro-batch, and how long a batch may wait to fill
    # (latency from produce to alert is about this plus the models' time for one batch)
    stream_batch_size: int = 256
    stream_batch_ms: int = 100
    # librdkafka settings passed through as they are (SASL/SSL included): the one key whose
    # contents are not checked; also SYSMON_BLT_KAFKA_<SETTING> (dots as underscores)
    kafka: dict = field(default_factory=dict)
    # alert hygiene: an open alert's twins alert again only after this quiet time; at most this
    # many alert messages per host and minute (beyond: one rate_summary message); and rules
    # whose matches never alert: a list of {text: REGEX, computer: REGEX, event_id: N, cluster: N}
    # (every key given must match)
    alert_quiet_minutes: int = 60
    alert_rate_per_host: int = 20
    suppress: list = field(default_factory=list)
    # the consumer's retention: events (and their vectors and scores) older than this many days
    # are pruned hourly, as `prune --older-than` does; 0 keeps everything
    retention_days: float = 0
    # without a fit: "case" calibrates the shipped model's scores on the run's own events (a
    # streaming quantile with stacking, see the README), "shipped" keeps the training corpus's
    # threshold (more flags; for a small capture where a quantile means little)
    cold_start: str = "case"
    # the consumer's learning period on a store with no fit: events are scored and stored, but
    # only scores of at least learning_bar alert until both learning_hours and learning_events
    # are reached; then it fits on them (holding back what it flagged) and scores with the fit.
    # learning_events 0 turns the period (and its automatic fit) off
    learning_hours: float = 24
    learning_events: int = 100_000
    learning_bar: float = 2.0
    # embedding workers (spawned processes holding the models): "auto" = one per CUDA device,
    # else one CPU worker using every core; 0 = embed in the command's own process; N = N workers
    workers: int | str = "auto"
    # incidents (`sysmon-blt incidents`): the primary model's outliers grouped by host and process
    # tree; an incident stays open while its outliers come less than this many minutes apart, and
    # takes in every event of its tree less than this long before its first or after its latest
    # outlier (a quieter gap starts a new incident of the same root)
    incident_window_minutes: float = 60.0

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
        if self.retention_days < 0:
            raise UsageError(f"{origin}: retention_days must be >= 0 (0 keeps everything)")
        if not 0.0 <= self.shadow_sample_rate <= 1.0:
            raise UsageError(f"{origin}: shadow_sample_rate must be between 0 and 1")
        if not isinstance(self.stream_batch_size, int) or self.stream_batch_size < 1:
            raise UsageError(f"{origin}: stream_batch_size must be a positive integer")
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
    env_values = {k[len(ENV_PREFIX):].lower(): v for k, v in env.items()
                  if k.startswith(ENV_PREFIX) and not k.startswith(kafka_prefix)}
    for key in env_values:
        if key not in _TYPES:
            raise UsageError(f"environment: unknown variable {ENV_PREFIX}{key.upper()}")
    _apply(cfg, env_values, "environment")
    _apply(cfg, {k: v for k, v in overrides.items() if v is not None}, "command line")
    cfg.validate("configuration")
    return cfg
