"""The preload: which modules the stacks import before forking task processes, and that it is safe."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


from driftwheel_ops.local_stack import LocalStack, StackConfig
from driftwheel_ops.native_stack import NativeStack, NativeStackConfig
from driftwheel_ops.preload import (
    DEFAULT_MODULES,
    PRELOAD_ENV,
    modules_from_env,
    preload,
    remember_mlflow_schema_head,
)


def _config(state: Path, **changes: object) -> StackConfig:
    return StackConfig(state_dir=state, dags_folder=state / "dags", airflow_db_uri="postgresql+psycopg2://x/af",
                       mlflow_db_uri="postgresql://x/ml", **changes)  # type: ignore[arg-type]  # fmt: skip


def _run_as_airflow(code: str, env: dict[str, str]) -> list[str]:
    """The output lines of ``code`` run by the venv's Python with (the relevant part of) ``env``:
    what an Airflow process of the stack finds on its PYTHONPATH, not what this test process has."""
    keep = {k: v for k, v in env.items() if k.startswith(("AIRFLOW", "PYTHONPATH", "PATH", "HOME"))}
    done = subprocess.run([sys.executable, "-c", code], env=keep, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip().splitlines()


def test_the_embedded_stack_runs_the_preloading_executor_with_the_task_libraries(tmp_path: Path) -> None:
    env = LocalStack(_config(tmp_path)).env
    # What the scheduler imports from that setting, on the stack's PYTHONPATH (the executor lives in
    # plugins/, outside include/, and this test process does not have it on sys.path).
    module, _, name = env["AIRFLOW__CORE__EXECUTOR"].rpartition(".")
    check = (
        "import importlib; from airflow.executors.local_executor import LocalExecutor;"
        f" e = getattr(importlib.import_module({module!r}), {name!r});"
        " print(isinstance(e, type) and issubclass(e, LocalExecutor), e.start is not LocalExecutor.start)"
    )
    assert _run_as_airflow(check, env)[-1:] == ["True True"]
    assert module.split(".")[0] not in {p.name for p in (Path(__file__).parents[1] / "include").iterdir()}
    assert modules_from_env(env) == DEFAULT_MODULES
    assert {"torch", "mlflow", "evidently", "pandas", "driftwheel.steps"} <= set(DEFAULT_MODULES)
    # Turned off: the executor imports nothing more than the LocalExecutor.
    assert modules_from_env(LocalStack(_config(tmp_path, preload_modules=())).env) == ()


def test_every_celery_worker_imports_the_preload_module_at_start(tmp_path: Path) -> None:
    stack = NativeStack(
        NativeStackConfig(
            state_dir=tmp_path,
            airflow_db_uri="postgresql+psycopg2://x/af",
            mlflow_db_uri="postgresql://x/ml",
            broker_url="redis://127.0.0.1:6379/0",
        )  # fmt: skip
    )
    env = stack.env
    assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    imports = json.loads(env["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"])["imports"]
    assert imports == ["driftwheel_airflow.celery_preload"]
    assert modules_from_env(env) == DEFAULT_MODULES
    # What the worker's Celery app is configured with, read as `airflow celery worker` reads it, and
    # that the worker finds the module on its PYTHONPATH (found, not imported: that would preload).
    read = (
        "import importlib.util; from airflow.providers.celery.executors.celery_executor import app;"
        " print(list(app.conf.imports), [importlib.util.find_spec(m) is not None for m in app.conf.imports])"
    )
    assert _run_as_airflow(read, env)[-1:] == [f"{imports} [True]"]


def test_modules_from_env_reads_a_comma_separated_list() -> None:
    assert modules_from_env({PRELOAD_ENV: " numpy, pandas ,,"}) == ("numpy", "pandas")
    assert modules_from_env({PRELOAD_ENV: ""}) == ()
    assert modules_from_env({}) == ()


def test_preload_skips_what_cannot_be_imported_and_reports_the_rest() -> None:
    seconds = preload(("json", "driftwheel_no_such_module", "driftwheel.decide"))
    assert set(seconds) == {"json", "driftwheel.decide"}
    assert "driftwheel.decide" in sys.modules


def test_a_process_forked_after_the_preload_trains_with_torch_threads(tmp_path: Path) -> None:
    # What a task process does: fork from a parent that imported torch, then use torch's thread
    # pools. A pool started before the fork would hang the child; this would time out.
    script = """
import os, sys
from driftwheel_ops.preload import preload
preload(("numpy", "torch"))
pid = os.fork()
if pid == 0:
    import torch
    torch.set_num_threads(2)
    x = torch.randn(256, 256)
    os._exit(0 if float((x @ x).sum()) == float((x @ x).sum()) else 1)
_, status = os.waitpid(pid, 0)
sys.exit(os.waitstatus_to_exitcode(status))
"""
    done = subprocess.run([sys.executable, "-c", script], timeout=120, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_mlflow_still_refuses_a_database_of_another_schema_once_its_head_is_remembered(tmp_path: Path) -> None:
    import pytest
    import sqlalchemy
    from mlflow.exceptions import MlflowException
    from mlflow.store.db import utils

    head = remember_mlflow_schema_head()
    assert head is not None and head == utils._get_latest_schema_revision()
    assert remember_mlflow_schema_head() == head  # remembered, not wrapped twice
    engine = sqlalchemy.create_engine(f"sqlite:///{tmp_path / 'mlflow.db'}")
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("CREATE TABLE alembic_version (version_num VARCHAR(32) NOT NULL)"))
        conn.execute(sqlalchemy.text("INSERT INTO alembic_version VALUES (:v)"), {"v": head})
    utils._verify_schema(engine)  # the database's revision is the head: accepted
    with engine.begin() as conn:
        conn.execute(sqlalchemy.text("UPDATE alembic_version SET version_num = 'an_old_revision'"))
    with pytest.raises(MlflowException, match="out-of-date database schema"):
        utils._verify_schema(engine)
    engine.dispose()
