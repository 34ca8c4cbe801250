"""The suite's run counts: byte-count figures and long sizes run fewer times, and the table says so.

A README row that claims a median of three runs while it ran once would be a
false statement about the measurement; these tests pin what the table prints.
"""

from __future__ import annotations

from bench.suite import Env, Figure, Row, Sample, table


async def _never(env: Env, size: int) -> list[Sample]:
    raise AssertionError("not measured here")


def _figure(**options: object) -> Figure:
    return Figure("f", "a figure", _never, {"full": (10, 20)}, lambda n: f"{n} x", **options)  # type: ignore[arg-type]


def _row(size: str, runs: int) -> Row:
    return Row("f", size, "metric", 1.0, "ms", "limit", 2.0, 0.5, "<= 1", True, runs, (0.5, 0.5), {})


def test_runs_follow_the_suite_unless_the_figure_caps_them() -> None:
    plain = _figure()
    capped = _figure(runs_at={20: 1})
    counted = _figure(counts=True)
    assert [plain.runs_for(10, 3), plain.runs_for(20, 3)] == [3, 3]
    assert [capped.runs_for(10, 3), capped.runs_for(20, 3)] == [3, 1]
    assert [counted.runs_for(10, 3), counted.runs_for(20, 5)] == [1, 1]
    assert capped.runs_for(10, 1) == 1  # --runs 1 is never raised


def test_the_table_marks_a_size_that_ran_fewer_times() -> None:
    text = table([_row("10 x", 3), _row("20 x", 1)], [_figure()], "full", 3)
    lines = [line for line in text.splitlines() if line.startswith("| f |")]
    assert lines[0].startswith("| f | 10 x | metric")
    assert lines[1].startswith("| f | 20 x (1 run) | metric")
    assert "medians of 3 run(s)" in text
