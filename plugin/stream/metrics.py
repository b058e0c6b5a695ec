"""What the consumer exposes on /metrics (Prometheus text) and /healthz, in one registry.

The consumer loop updates these; the HTTP service only reads them. A registry of its own (not
prometheus_client's global one) so tests and two apps in one process never collide.
"""

from __future__ import annotations

import threading

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram


class StreamMetrics:
    def __init__(self, needs_group: bool = True) -> None:
        """``needs_group``: readiness waits for a consumer group join (False for `serve`)."""
        self.needs_group = needs_group
        self.registry = CollectorRegistry()
        r = self.registry
        self.records_in = Counter("sysmon_blt_records_in", "Kafka messages consumed", registry=r)
        self.events_stored = Counter("sysmon_blt_events_stored", "new events durably stored",
                                     registry=r)
        self.dead_letters = Counter("sysmon_blt_dead_letters", "records that became dead letters",
                                    registry=r)
        self.outliers = Counter("sysmon_blt_outliers", "events flagged by the primary model",
                                registry=r)
        self.alerts_published = Counter("sysmon_blt_alerts_published",
                                        "alert messages sent to the alerts topic", registry=r)
        self.alerts_suppressed = Counter("sysmon_blt_alerts_suppressed",
                                         "alerts kept as suppressed by a configured rule",
                                         registry=r)
        self.batch_seconds = Histogram(
            "sysmon_blt_batch_seconds", "time from a batch's first record to its durable write",
            buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30), registry=r)
        self.batches_in_flight = Gauge("sysmon_blt_batches_in_flight",
                                       "batches handed to the sink and not yet durable", registry=r)
        self.paused = Gauge("sysmon_blt_partitions_paused",
                            "1 while fetching is paused because the models and sink are behind",
                            registry=r)
        self.pauses = Counter("sysmon_blt_pauses", "times fetching was paused for back-pressure",
                              registry=r)
        self.pruned = Counter("sysmon_blt_rows_pruned", "rows removed by retention",
                              ["table"], registry=r)
        self.learning = Gauge("sysmon_blt_learning",
                              "1 during the learning period (no fit yet: only scores at the "
                              "learning bar alert)", registry=r)
        self.fits_picked_up = Counter("sysmon_blt_fits_picked_up",
                                      "newer fits made elsewhere (another instance, `fit`) "
                                      "this consumer switched to", ["model"], registry=r)
        self.lag = Gauge("sysmon_blt_consumer_lag", "messages behind the partition's end",
                         ["topic", "partition"], registry=r)
        self._joined = threading.Event()
        self._models = threading.Event()

    def joined(self) -> None:
        self._joined.set()

    def models_loaded(self) -> None:
        self._models.set()

    def ready(self) -> dict:
        """Readiness as /healthz reports it: the group joined and the models loaded."""
        joined = self._joined.is_set() or not self.needs_group
        return {"ready": joined and self._models.is_set(),
                "group_joined": self._joined.is_set(), "models_loaded": self._models.is_set()}
