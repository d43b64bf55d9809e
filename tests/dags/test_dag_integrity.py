"""The DAG folder parses, without heavy imports, into the expected graph.

Airflow is loaded in a subprocess with its own AIRFLOW_HOME so these tests need no database and
leave the test process free of Airflow's configuration.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
HEAVY = {"torch", "evidently", "mlflow", "pandas", "numpy", "sklearn", "pyarrow", "spotipy", "driftwheel"}

PARSE = """
import gc, json, sys, time
from airflow.dag_processing.dagbag import DagBag
# As Airflow's DAG processor does before it forks a parser: without it, whichever file happens to
# tip the allocation count pays for a full collection of Airflow's whole heap (~1 s on a busy machine).
gc.freeze()
started = time.perf_counter()
bag = DagBag(sys.argv[1])
seconds = time.perf_counter() - started
dag = bag.dags.get("spotify_flywheel")
print(json.dumps({
    "errors": {k: str(v) for k, v in bag.import_errors.items()},
    "seconds": seconds,
    "heavy_loaded": sorted(m for m in ("torch", "evidently", "mlflow", "pandas", "driftwheel.steps") if m in sys.modules),
    "edges": sorted([t.task_id, d] for t in dag.tasks for d in t.downstream_task_ids) if dag else None,
    "branches": sorted(t.task_id for t in dag.tasks if "Branch" in type(t).__name__) if dag else None,
    "trigger_rules": {t.task_id: getattr(t.trigger_rule, "value", t.trigger_rule) for t in dag.tasks} if dag else None,
    "max_active_runs": dag.max_active_runs if dag else None,
    "depends_on_past": sorted({t.depends_on_past for t in dag.tasks}) if dag else None,
    "params": sorted(dag.params.keys()) if dag else None,
    "scenario_enum": dag.params.get_param("scenario").schema.get("enum") if dag else None,
    "schedule": dag.timetable.expression if dag else None,
    "live": {
        d.dag_id: {
            "edges": sorted([t.task_id, x] for t in d.tasks for x in t.downstream_task_ids),
            "schedule": getattr(d.timetable, "expression", None),
            "scheduled_on": [a.name for a in getattr(getattr(d.timetable, "asset_condition", None), "objects", ())],
            "outlets": {t.task_id: [a.name for a in t.outlets] for t in d.tasks if t.outlets},
        }
        for d in bag.dags.values() if d.dag_id.startswith("live_")
    },
}))
"""


@pytest.fixture(scope="module")
def parsed(tmp_path_factory: pytest.TempPathFactory) -> dict:
    home = tmp_path_factory.mktemp("airflow_home")
    env = {
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(REPO / "include"),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run([sys.executable, "-c", PARSE, str(DAGS)], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_no_import_errors(parsed: dict) -> None:
    assert parsed["errors"] == {}


def test_expected_tasks_and_edges(parsed: dict) -> None:
    assert parsed["edges"] == sorted(
        [
            ["ingest_tracks", "validate_tracks"],
            ["validate_tracks", "report_drift"],
            ["report_drift", "decide_retrain"],
            ["report_drift", "retrain_model"],
            ["report_drift", "skip_retrain"],
            ["report_drift", "evaluate_challenger"],
            ["report_drift", "promote_champion"],
            ["report_drift", "reject_challenger"],
            ["report_drift", "finish_period"],
            ["decide_retrain", "retrain_model"],
            ["decide_retrain", "skip_retrain"],
            ["retrain_model", "evaluate_challenger"],
            ["retrain_model", "promote_champion"],
            ["retrain_model", "reject_challenger"],
            ["evaluate_challenger", "decide_promotion"],
            ["evaluate_challenger", "promote_champion"],
            ["evaluate_challenger", "reject_challenger"],
            ["decide_promotion", "promote_champion"],
            ["decide_promotion", "reject_challenger"],
            ["promote_champion", "finish_period"],
            ["reject_challenger", "finish_period"],
            ["skip_retrain", "finish_period"],
        ]
    )
    assert parsed["trigger_rules"]["finish_period"] == "none_failed_min_one_success"
    # Branches only map a result to a task id; the gate's work is a normal task.
    assert parsed["branches"] == ["decide_promotion", "decide_retrain"]


def test_runs_chain_in_year_order(parsed: dict) -> None:
    assert parsed["max_active_runs"] == 1
    assert parsed["depends_on_past"] == [True]
    assert parsed["schedule"] in ("@yearly", "0 0 1 1 *")
    assert {"year", "source", "strategy", "force_retrain"} <= set(parsed["params"])


def test_the_scenario_param_offers_exactly_the_presets(parsed: dict) -> None:
    from driftwheel.scenarios import PRESETS

    # The trigger form validates against this list: a typo is refused before a run is created.
    assert parsed["scenario_enum"] == [None, *PRESETS]


def test_parse_is_fast_and_loads_nothing_heavy(parsed: dict) -> None:
    assert parsed["heavy_loaded"] == []
    assert parsed["seconds"] < 1.0


def test_dag_files_import_nothing_heavy_at_top_level() -> None:
    for path in DAGS.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            # The settings module is light (no data library) and gives the DAG its year bounds.
            heavy = [n for n in names if n.split(".")[0] in HEAVY and n != "driftwheel.config"]
            assert not heavy, f"{path.name}:{node.lineno}"


def test_live_ingest_and_retrain_are_joined_by_an_asset(parsed: dict) -> None:
    ingest, retrain = parsed["live"]["live_ingest"], parsed["live"]["live_retrain"]
    assert ingest["schedule"] in ("@weekly", "0 0 * * 0")
    assert ingest["edges"] == sorted(
        [
            ["collect_new_tracks", "decide_live_retrain"],
            ["collect_new_tracks", "announce_new_tracks"],
            ["collect_new_tracks", "wait_for_rows"],
            ["decide_live_retrain", "announce_new_tracks"],
            ["decide_live_retrain", "wait_for_rows"],
        ]
    )
    # Lineage: the asset announce_new_tracks updates is the one live_retrain is scheduled on.
    assert ingest["outlets"] == {"announce_new_tracks": ["driftwheel_new_labeled_tracks"]}
    assert retrain["scheduled_on"] == ["driftwheel_new_labeled_tracks"]
    assert retrain["edges"] == [["plan_retrain", "retrain_period"]]
