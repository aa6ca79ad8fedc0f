"""The engine benchmark runs (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks import bench_engine
from custom_components.v2g.engine import Strategy


def test_run_reports_every_strategy_per_size() -> None:
    rows = bench_engine.run([20, 50], repeat=2)
    assert [(r["size"], r["strategy"]) for r in rows] == [
        (size, strategy.value) for size in (20, 50) for strategy in Strategy
    ]
    for row in rows:
        assert row["eligibility_ms"] >= 0.0
        assert row["allocation_ms"] >= 0.0
        assert row["peak_kib"] > 0.0
        assert 0 < row["assigned"] <= row["candidates"] <= row["size"]
    table = bench_engine.markdown(rows)
    assert table.splitlines()[0].startswith("| vehicles | strategy |")
    assert len(table.splitlines()) == 2 + len(rows)


def test_fleet_is_reproducible() -> None:
    assert bench_engine.make_fleet(30) == bench_engine.make_fleet(30)


def test_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bench.json"
    assert (
        bench_engine.main(["--sizes", "10", "--repeat", "1", "--json", str(out)]) == 0
    )
    assert len(json.loads(out.read_text(encoding="utf-8"))) == len(Strategy)
    assert "| 10 |" in capsys.readouterr().out
    with pytest.raises(ValueError, match="repeat"):
        bench_engine.run([10], repeat=0)
