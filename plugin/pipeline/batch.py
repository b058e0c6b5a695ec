"""What flows through the stages: one micro-batch of normalized events and what stages add to it.

Kept apart from the flow so stages (embed, score) and the entry points that feed them (import,
rescore, the Kafka consumer) share the type without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from plugin.normalize.normalizer import NormalizedEvent
from plugin.store import DeadLetter, VectorRows


@dataclass
class Batch:
    """Events, dead letters, and what the stages add: new vectors, scores, alerts, incidents."""

    events: list[NormalizedEvent]
    dead: list[DeadLetter] = field(default_factory=list)
    vectors: list[VectorRows] = field(default_factory=list)  # new vectors, to store
    text_vectors: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)  # model -> hash -> vector
    assignments: list[dict] = field(default_factory=list)  # scores, one row per event and model
    alerts: list[dict] = field(default_factory=list)  # outliers of the primary model
    # incidents of the primary model that grew in this batch (`plugin.pipeline.incidents`): the
    # incident row with the stage's running totals, ``linked_before`` (keys of events written
    # with earlier batches that joined now) and ``alert_ids`` (alerts whose events joined now)
    incidents: list[dict] = field(default_factory=list)
    # what a stage's `prepare` half computed ahead (stage name -> its result), for its call
    prepared: dict[str, object] = field(default_factory=dict)
    # events' fields as the process-tree walks read them (event key -> `process_view`), parsed
    # by the first stage that needs them
    views: dict[str, dict] = field(default_factory=dict)


# A stage sees each batch after normalization and before the sink (embedding and scoring plug in
# here); it may add to the batch but must not drop events. A stage may also have a `prepare(batch)`
# method: work that touches neither the store nor state another stage reads (a model call), which
# the flow runs ahead on a thread of its own, in batch order, before the stage is called.
BatchStage = Callable[[Batch], None]
