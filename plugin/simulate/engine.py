"""The event stream: boots the fleet and interleaves its hosts' events in time order.

Why a module of its own: this is the only place that wires the pieces together (state, event
types, launches, routine, scenarios) and decides, event by event, whether a host behaves
normally, shows novelty or is attacked. The per-host modules stay unaware of one another.
"""

from __future__ import annotations

import heapq
from datetime import datetime, timezone
from typing import Callable, Iterator

from .event import SimEvent
from .fleet import Fleet, Host
from .programs import Programs
from .routine import Routine
from .scenarios import Scenarios
from .sysmon import EventFactory

__all__ = ["DEFAULT_START", "generate"]

DEFAULT_START = datetime(2026, 1, 5, 8, 0, 0, tzinfo=timezone.utc)


class _Machine:
    """One host with its behaviours: what the scheduler needs to ask it for its next event."""

    __slots__ = ("host", "step", "anomaly", "novel")

    def __init__(self, host: Host) -> None:
        ev = EventFactory(host)
        programs = Programs(host, ev)
        programs.boot()
        scenarios = Scenarios(host, ev)
        self.host = host
        self.step: Callable[[], SimEvent] = Routine(host, ev, programs).step
        self.anomaly: Callable[[], SimEvent] = scenarios.anomaly
        self.novel: Callable[[], SimEvent] = scenarios.novel


def generate(n: int, *, seed: int = 0, anomaly_rate: float = 0.01, novel_rate: float = 0.02,
             hosts: int = 8, start: datetime | None = None) -> Iterator[SimEvent]:
    """Lazily yield `n` simulated events in time order across the fleet (constant memory).

    Per host: record ids increase by one, UtcTime advances by at least 1 ms. Each event is an
    injected anomaly with probability `anomaly_rate`, never-seen benign behaviour with
    probability `novel_rate`, otherwise ordinary fleet behaviour.
    """
    if n < 0:
        raise ValueError("n must be >= 0")
    if hosts < 1:
        raise ValueError("hosts must be >= 1")
    if not 0.0 <= anomaly_rate <= 1.0 or not 0.0 <= novel_rate <= 1.0:
        raise ValueError("anomaly_rate and novel_rate must be between 0 and 1")
    return _generate(n, seed, anomaly_rate, novel_rate, hosts, start)


def _generate(n: int, seed: int, anomaly_rate: float, novel_rate: float, hosts: int,
              start: datetime | None) -> Iterator[SimEvent]:
    if n == 0:
        return
    if start is None:
        start = DEFAULT_START
    elif start.tzinfo is None:
        start = start.replace(tzinfo=timezone.utc)
    start = start.astimezone(timezone.utc).replace(microsecond=start.microsecond // 1000 * 1000)
    sim = Fleet(seed, hosts, start)
    # one host at a time: each boot draws from the shared generator before the next host exists
    fleet = [_Machine(sim.add_host()) for _ in range(sim.size)]
    rng = sim.rng
    rand = rng.random
    heap = [(m.host.t_ms, m.host.idx) for m in fleet]
    heapq.heapify(heap)
    novel_cut = anomaly_rate + novel_rate
    for _ in range(n):
        _, idx = heapq.heappop(heap)
        m = fleet[idx]
        h = m.host
        h.set_clock()
        r = rand()
        if h.booting:
            ev = m.step()
        elif r < anomaly_rate:
            ev = m.anomaly()
        elif r < novel_cut:
            ev = m.novel()
        else:
            ev = m.step()
        yield ev
        # bursts (queued follow-ups) come quickly; otherwise the host idles a while
        if h.pending:
            h.t_ms += 1 + int(rand() * 6)
        else:
            h.t_ms += 1 + int(rng.expovariate(0.004))
        heapq.heappush(heap, (h.t_ms, idx))
