"""Dependencies point one way: dags/ and driftwheel_ops -> driftwheel -> third-party libraries.

The library never imports Airflow (it must run from a notebook, a CLI or a benchmark), nor the
operations package, nor the process-supervision modules that package uses. Nothing under include/
imports Airflow: the code Airflow's processes import by name lives in plugins/driftwheel_airflow/.
"""

import ast
import subprocess
import sys
from pathlib import Path

INCLUDE = Path(__file__).resolve().parents[1] / "include"
LIBRARY = INCLUDE / "driftwheel"
OPERATIONS = INCLUDE / "driftwheel_ops"


def _imports(package: Path) -> list[tuple[Path, str]]:
    found = []
    for path in package.rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            found += [(path, n) for n in names]
    return found


def test_no_module_in_the_library_imports_airflow() -> None:
    offenders = [f"{p.name}: {n}" for p, n in _imports(LIBRARY) if n.split(".")[0] == "airflow"]
    assert offenders == []


def test_the_library_imports_neither_the_operations_package_nor_process_tools() -> None:
    # __main__ only dispatches ``python -m driftwheel`` to the operations package's CLI.
    forbidden = {"driftwheel_ops", "subprocess", "psutil"}
    offenders = [
        f"{p.relative_to(LIBRARY)}: {n}"
        for p, n in _imports(LIBRARY)
        if n.split(".")[0] in forbidden and p.name != "__main__.py"
    ]
    assert offenders == []


def test_nothing_under_include_imports_airflow() -> None:
    # The operations package drives Airflow through its CLI and REST API, as an operator would, so
    # it runs in any venv; what runs inside Airflow's processes lives in plugins/driftwheel_airflow/.
    packages = sorted(p.parent for p in INCLUDE.glob("*/__init__.py"))
    assert {LIBRARY, OPERATIONS} <= set(packages)  # the walk below sees the packages it must
    offenders = [f"{p.relative_to(INCLUDE)}: {n}" for p, n in _imports(INCLUDE) if n.split(".")[0] == "airflow"]
    assert offenders == []


def test_the_airflow_side_package_is_not_loaded_as_a_plugin() -> None:
    # The plugins manager execs every .py file of the plugins folder that .airflowignore does not
    # exclude; celery_preload.py would then preload torch into the api-server and the scheduler.
    from airflow._shared.module_loading import find_path_from_directory

    plugins = INCLUDE.parent / "plugins"
    assert (plugins / "driftwheel_airflow" / "preloading_executor.py").is_file()
    loaded = [Path(f).relative_to(plugins) for f in find_path_from_directory(str(plugins), ".airflowignore", "glob")]
    assert Path("flywheel_links.py") in loaded
    assert [f for f in loaded if f.parts[0] == "driftwheel_airflow"] == []


def test_importing_the_steps_and_the_cli_loads_no_airflow() -> None:
    code = (
        "import sys, driftwheel.steps, driftwheel_ops.cli;"
        " print(any(m.split('.')[0] == 'airflow' for m in sys.modules))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(INCLUDE)}
    )
    assert out.stdout.strip() == "False"
