"""The fixed-scale sparkline."""

from __future__ import annotations

from console.core.widgets.spark import BARS, bucket, spark_text


def test_fixed_scale_does_not_exaggerate_small_wobbles() -> None:
    # 45.0..45.4 % on a 0..100 scale: all bars the same height, not a saw-tooth.
    text = spark_text([45.0, 45.4, 45.1, 45.3], 4, 100.0).plain
    assert len(set(text)) == 1 and text[0] == BARS[3]


def test_full_and_empty_and_right_alignment() -> None:
    text = spark_text([0.0, 100.0], 5, 100.0)
    assert text.plain == "   " + BARS[0] + BARS[-1]
    assert text.spans[-1].style == "red"  # >= 90 % of scale


def test_bucketing_keeps_spikes() -> None:
    values = [1.0] * 100
    values[37] = 99.0
    out = bucket(values, 10)
    assert len(out) == 10 and max(out) == 99.0
    assert bucket([1.0, 2.0], 10) == [1.0, 2.0] and bucket([], 10) == []


def test_autoscale_when_no_ceiling() -> None:
    assert spark_text([1.0, 2.0], 2, None).plain == BARS[3] + BARS[-1]
