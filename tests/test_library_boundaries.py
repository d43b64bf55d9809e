"""The library never imports Airflow: it must run from a notebook, a CLI or a benchmark."""

import ast
import subprocess
import sys
from pathlib import Path

LIBRARY = Path(__file__).resolve().parents[1] / "include" / "driftwheel"


def test_no_module_in_the_library_imports_airflow() -> None:
    offenders = []
    for path in LIBRARY.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            offenders += [f"{path.name}: {n}" for n in names if n.split(".")[0] == "airflow"]
    assert offenders == []


def test_importing_the_steps_loads_no_airflow() -> None:
    code = "import sys, driftwheel.steps, driftwheel.cli; print(any(m.split('.')[0] == 'airflow' for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(LIBRARY.parent)})
    assert out.stdout.strip() == "False"
