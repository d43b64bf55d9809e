"""The drift lab: its numbers (detection delay, counts) and the command a user types."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from driftwheel.lab import (
    CellResult,
    LabYears,
    PeriodResult,
    default_losses,
    detection_delay,
    first_change,
    summarize_cell,
)
from driftwheel.policies import BENCHMARK_POLICIES, LAB_POLICIES, POLICIES

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize(
    ("change", "retrains", "delay"),
    [
        (2016, [2016, 2017], 0),  # retrained on the change's first period
        (2016, [2018], 2),
        (2016, [2015, 2019], 3),  # a retrain before the change detected nothing
        (2016, [2015], None),  # never retrained after the change
        (2016, [], None),
        (None, [2015, 2016], None),  # no change, nothing to detect
    ],
)
def test_detection_delay_counts_periods_from_the_change_to_the_first_retrain(
    change: int | None, retrains: list[int], delay: int | None
) -> None:
    assert detection_delay(change, retrains) == delay


def test_the_change_is_the_first_shift_in_the_scored_years() -> None:
    scored = LabYears().scored
    assert first_change("label_sudden", scored) == 2016
    assert first_change("spotify_like", scored) == 2015  # the built-in schedule steps in 2015 and 2018
    assert first_change("stable", scored) is None
    assert first_change("spotify_like", [2016, 2017, 2018]) == 2018


def test_a_cell_counts_only_the_scored_years() -> None:
    years = LabYears(first=2013, warmup_end=2014, last=2018)
    periods = [
        PeriodResult(2013, None, "skip", False, False, None),
        PeriodResult(2014, None, "retrain", True, True, 5.0),  # the cold start: not a scored year
        PeriodResult(2015, 6.0, "skip", False, False, None),
        PeriodResult(2016, 9.0, "retrain", True, False, 1.5),  # rejected by the gate
        PeriodResult(2017, 8.0, "retrain", True, True, 2.0),
        PeriodResult(2018, 7.0, "skip", False, False, None),
    ]
    summary = summarize_cell(CellResult("label_sudden", "default", periods), years)
    assert summary["mean_production_rmse"] == pytest.approx(7.5)
    assert (summary["retrains"], summary["promotions"], summary["rejected"]) == (2, 1, 1)
    assert summary["retrain_seconds"] == pytest.approx(3.5)
    assert summary["detection_delay"] == 0  # label_sudden changes in 2016; retrained on 2016
    assert summary["retrained"] == [2016, 2017] and summary["promoted"] == [2017]


def test_the_benchmark_keeps_its_policies_and_the_lab_has_every_trigger() -> None:
    assert BENCHMARK_POLICIES == (
        "static",
        "study_transfer",
        "full_retrain",
        "previous_mean",
        "default",
        "default_drift_triggered",
        "default_from_scratch",
    )
    assert set(LAB_POLICIES) == {
        "static",
        "full_retrain",
        "drift_triggered",
        "error_triggered",
        "study_transfer",
        "default",
    }
    assert all(POLICIES[name].configure is not None for name in LAB_POLICIES)


def test_the_lab_command_writes_the_matrix(tmp_path: Path) -> None:
    # What a user types, as a subprocess: one scenario (a file: popularity jumps 8 points in 2015),
    # two policies, few rows and years (about 40 s on an idle 2-core machine), then again on two workers.
    scenario = tmp_path / "jump_2015.json"
    scenario.write_text(
        json.dumps(
            {"name": "jump_2015", "shifts": [{"kind": "label", "shape": "sudden", "start": 2015, "severity": 8.0}]}
        )
    )
    out = tmp_path / "lab"
    command = [
        *(sys.executable, "-m", "driftwheel", "lab", "--scenarios", str(scenario), "--policies", "static", "default"),
        *("--rows", "300", "--first-year", "2013", "--warmup-end", "2014", "--last-year", "2015", "--jobs", "1"),
        *("--out", str(out), "--state-dir", str(tmp_path / "state")),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"[1/1] {scenario} done" in done.stdout

    summary = json.loads((out / "lab.json").read_text())
    assert summary["years"]["scored"] == [2015]
    cell = summary["scenarios"][str(scenario)]
    assert cell["change_year"] == 2015
    static, default = cell["policies"]["static"], cell["policies"]["default"]
    assert static["retrains"] == 0 and static["detection_delay"] is None
    # The default sees the target drift of the jump and retrains on its first year.
    assert default["detection_delay"] == 0 and default["retrained"] == [2015]
    assert default["per_period"]["2015"] is not None
    markdown = (out / "lab.md").read_text()
    assert f"| {scenario} |" in markdown and "![" in markdown and "(jump_2015.png)" in markdown
    plot = out / "jump_2015.png"
    assert plot.read_bytes().startswith(b"\x89PNG")

    # Two workers (a cell each, sharing the drift reports) give the same matrix as one.
    again = [*command[: command.index("--jobs")], "--jobs", "2", "--out", str(tmp_path / "lab2")]
    again += ["--state-dir", str(tmp_path / "state2")]
    done = subprocess.run(again, capture_output=True, text=True, timeout=1200, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 worker(s)" in done.stdout
    assert _numbers(json.loads((tmp_path / "lab2" / "lab.json").read_text())) == _numbers(summary)


def _numbers(value: Any) -> Any:
    """The lab's JSON without what the clock and the worker count say."""
    timing = {"seconds", "cpu_seconds", "jobs", "wall_seconds", "retrain_seconds"}
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items() if k not in timing}
    return value


def test_the_lab_command_names_an_unknown_scenario(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "driftwheel", "lab", "--scenarios", "drifty", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert "unknown scenario 'drifty'" in done.stderr and "label_sudden" in done.stderr


def test_the_default_losses_are_listed_largest_first() -> None:
    def entry(**means: float | None) -> dict[str, Any]:
        return {"policies": {p: {"mean_production_rmse": m} for p, m in means.items()}}

    summary = {
        "scenarios": {
            "won": entry(default=5.0, static=6.0),
            "tied": entry(default=5.0, static=5.0),
            "lost_a_bit": entry(default=6.0, static=5.5, full_retrain=7.0),
            "lost_more": entry(default=8.0, static=9.0, study_transfer=6.0),
            "unfinished": entry(default=None, static=5.0),
        }
    }
    losses = default_losses(summary)
    assert [loss["scenario"] for loss in losses] == ["lost_more", "lost_a_bit"]
    assert losses[0]["best"] == ["study_transfer"] and losses[0]["by"] == pytest.approx(2.0)
    assert losses[1]["best_rmse"] == pytest.approx(5.5)
