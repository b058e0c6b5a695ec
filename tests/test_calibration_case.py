"""The cold start's case calibration: a streaming, event-weighted quantile of this run's content
measures, with stacking (what the case repeats is its routine)."""

from __future__ import annotations

import numpy as np

from plugin.detect.calibration import CaseCalibration


def test_before_min_events_the_shipped_threshold_and_the_bar_apply():
    c = CaseCalibration(5.0, quantile=0.98, min_events=100, bar=2.0)
    c.observe(np.full(50, 9.0))
    assert not c.warm and c.threshold() == 5.0 and c.outlier_bar() == 2.0


def test_a_noisy_case_raises_the_threshold_to_its_own_quantile():
    rng = np.random.default_rng(0)
    values = rng.uniform(4.0, 12.0, 10_000)
    c = CaseCalibration(5.0, quantile=0.98, min_events=1000)
    c.observe(values)
    assert c.warm and c.outlier_bar() == 1.0
    # about 2% of the case's events lie above the threshold, none of the shipped 5.0's 87%
    assert abs(np.mean(values >= c.threshold()) - 0.02) < 0.003
    assert abs(c.threshold() - np.quantile(values, 0.98)) < 0.02


def test_a_quiet_case_keeps_the_shipped_threshold():
    c = CaseCalibration(10.0, quantile=0.98, min_events=10)
    c.observe(np.full(1000, 3.0))
    assert c.threshold() == 10.0


def test_values_beyond_the_histogram_are_counted_not_lost():
    c = CaseCalibration(1.0, quantile=0.5, min_events=1)
    c.observe(np.array([40.0, 50.0, -1.0]))
    assert c.events == 3 and c.hist.counts.sum() == 3


def test_stacking_lowers_a_text_each_time_the_case_repeats_it():
    c = CaseCalibration(5.0)
    first = c.stacked(["a", "b"], np.array([8.0, 8.0]))
    assert np.allclose(first, 8.0)  # first sight: the text's own measure
    again = c.stacked(["a"] * 7, np.full(7, 8.0))
    assert np.all(np.diff(again) < 0)  # every repeat counts
    assert again[-1] == 8.0 / (1 + CaseCalibration.STACKING * 3)  # the 8th event of "a"
    assert c.stacked(["b"], np.array([8.0]))[0] > again[-1]  # "b" was seen once before


def test_a_settled_calibration_judges_by_the_whole_case_and_walks_it_again():
    """The second walk of an import without a fit (`plugin.pipeline.settle`): the threshold is
    the quantile of every event of the first walk from the first event on, the stacking counts
    start again (so they match the first walk's), and what the second walk sees moves nothing."""
    rng = np.random.default_rng(1)
    early, late = rng.uniform(2.0, 4.0, 2000), rng.uniform(4.0, 12.0, 8000)
    c = CaseCalibration(1.0, quantile=0.98, min_events=1000)
    c.observe(early)
    early_threshold = c.threshold()
    c.stacked(["a", "a"], np.array([8.0, 8.0]))
    c.observe(late)
    s = c.settled()
    assert s.warm and s.threshold() == c.threshold() > early_threshold + 5
    s.observe(np.full(50_000, 0.5))  # the second walk's own values do not move its bar
    assert s.threshold() == c.threshold() and s.describe()["whole_case"] is True
    assert s.stacked(["a"], np.array([8.0]))[0] == 8.0  # "a" is new to the second walk
    assert c.describe()["whole_case"] is False


def test_a_settled_case_context_keeps_the_whole_case_threshold_and_walks_again():
    from plugin.detect.context import CaseContext

    ctx = CaseContext(min_events=100, quantile=0.99)
    ctx.observe(np.linspace(0.0, 3.0, 1000))
    ctx.walk("h", 1, {}, "eid=1 image=c:\\a.exe", 0.5)
    s = ctx.settled()
    assert s.warm and s.threshold() == ctx.threshold() and s.events == 0
    s.observe(np.full(10_000, 9.0))
    assert s.threshold() == ctx.threshold()
