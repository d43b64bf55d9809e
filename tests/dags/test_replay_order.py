"""The in-process replay runs the DAG's tasks in an order the DAG allows: one wiring, two runners.

If a task is added to, renamed in or reordered in dags/spotify_flywheel.py, driftwheel.replay must
follow (the benchmark and the fast tests run periods through it).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

DOWNSTREAM = """
import json, sys
from airflow.dag_processing.dagbag import DagBag
dag = DagBag(sys.argv[1]).dags["spotify_flywheel"]
print(json.dumps({t.task_id: sorted(t.get_flat_relative_ids(upstream=False)) for t in dag.tasks}))
"""


def _replay_steps() -> list[str]:
    """The step names replay_period records as it goes (``step = "..."``), in source order."""
    tree = ast.parse((REPO / "include" / "driftwheel" / "replay.py").read_text())
    function = next(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == "replay_period")
    assigned = [
        (node.lineno, node.value.value)
        for node in ast.walk(function)
        if isinstance(node, ast.Assign)
        and [getattr(t, "id", None) for t in node.targets] == ["step"]
        and isinstance(node.value, ast.Constant)
    ]
    return [name for _, name in sorted(assigned)]


def test_the_replay_runs_dag_tasks_in_an_order_the_dag_allows(tmp_path: Path) -> None:
    env = {
        "AIRFLOW_HOME": str(tmp_path),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "PYTHONPATH": str(REPO / "include"),
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-c", DOWNSTREAM, str(REPO / "dags")], capture_output=True, text=True, env=env, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    downstream: dict[str, list[str]] = json.loads(out.stdout.strip().splitlines()[-1])

    steps = _replay_steps()
    assert steps[0] == "ingest_tracks" and steps[-1] == "finish_period"
    assert set(steps) <= set(downstream), f"steps the DAG has no task for: {set(steps) - set(downstream)}"
    # Only the branch that does nothing is missing from the replay.
    assert set(downstream) - set(steps) == {"skip_retrain"}
    for earlier, later in zip(steps, steps[1:]):
        # Consecutive steps: the later never runs before the earlier in the DAG (promote and
        # reject are alternatives, neither downstream of the other).
        assert earlier not in downstream[later], f"the DAG runs {later} before {earlier}"
    for step in steps[:-1]:
        assert step in downstream["ingest_tracks"] or step == "ingest_tracks"
        assert "finish_period" in downstream[step]
