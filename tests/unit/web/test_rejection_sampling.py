"""Bounded auditing of refused back-channel logout calls: a sample in full, the rest counted."""

from __future__ import annotations

from typing import Any

from bridge.oidc.rejections import SampledRejections


class Clock:
    now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_sample_then_count_then_summary() -> None:
    out: list[dict[str, Any]] = []
    clock = Clock()
    s = SampledRejections(out.append, "back-channel logout", sample=3, window_seconds=60, clock=clock, timer=False)
    for i in range(1000):
        s({"reason": f"r{i}"})
    assert [e["reason"] for e in out] == ["r0", "r1", "r2"] and s.suppressed == 997
    clock.now += 61
    s({"reason": "next window"})
    assert out[3]["suppressed"] == 997 and "997 more" in out[3]["reason"]
    assert out[4] == {"reason": "next window"}
    s.flush()
    assert len(out) == 5  # nothing left out in the new window: no empty summary


def test_timer_reports_a_flood_that_stopped() -> None:
    import time

    out: list[dict[str, Any]] = []
    s = SampledRejections(out.append, "x", sample=1, window_seconds=0.2)
    for _ in range(5):
        s({"reason": "bad"})
    time.sleep(0.5)
    assert out[-1]["suppressed"] == 4
