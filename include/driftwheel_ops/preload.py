"""Import the tasks' heavy libraries once, in the process that forks the task processes.

Airflow 3 runs every task in a process forked from an executor worker (the task supervisor forks
it). A fresh task process that imports torch, mlflow, evidently and pandas spends seconds on it,
each task of each run; a worker that imported them before it forked hands them to every task
process for free (copy-on-write). The stacks name the modules in ``DRIFTWHEEL_PRELOAD`` (a comma
separated list; unset or empty: nothing is preloaded) and import them where workers are forked:

* the LocalExecutor (``make demo``): :class:`driftwheel_airflow.preloading_executor.PreloadingLocalExecutor`
  imports them in the scheduler right before it forks its workers;
* Celery workers (``make stack``): :mod:`driftwheel_airflow.celery_preload`, which each worker imports
  at start (Celery's ``imports`` setting), before its pool forks the worker processes.

Fork safety: only imports happen here. Nothing may start a thread (an OpenMP or torch thread pool
is started by the first tensor operation, in the task process), open a connection or a file the
children would share; :func:`preload` says so in the log if a thread was started anyway. The
library's own modules are preloaded too: a change to them needs a restart of the stack (``make
demo`` starts a new one each time).

This module never imports airflow.
"""

from __future__ import annotations

import functools
import importlib
import logging
import os
import threading
import sys
import time
from collections.abc import Mapping

log = logging.getLogger(__name__)

PRELOAD_ENV = "DRIFTWHEEL_PRELOAD"
# What the flywheel's tasks import, heaviest first: with these in the parent, a task imports nothing
# that costs more than a few milliseconds. Evidently's submodules are those driftwheel.drift uses.
DEFAULT_MODULES: tuple[str, ...] = (
    "numpy",
    "pandas",
    "torch",
    "torch._dynamo",  # imported by the optimizer's first step (sympy with it): seconds
    "mlflow",
    "mlflow.pyfunc",
    # The tracking and registry stores on a database URI, and the alembic that checks their schema:
    # imported by the first MLflow call of each task, seconds each time.
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "alembic.command",
    "alembic.config",
    "evidently",
    "evidently.metrics",
    "evidently.presets",
    "plotly.graph_objects",  # the drift report's charts
    "pyarrow.parquet",
    "pandera.pandas",
    "pandera.backends.pandas.register",  # the first validation registers pandera's backends
    "pandera.backends.pandas.container",
    "pandera.backends.pandas.components",
    "driftwheel.steps",
    "driftwheel.registry",
    "driftwheel.model",
    "driftwheel.drift",
    "driftwheel.report",
    "driftwheel.validate",
    "driftwheel.sources.synthetic",
    "driftwheel.planners",
)


def modules_from_env(env: Mapping[str, str] | None = None) -> tuple[str, ...]:
    """The module names ``DRIFTWHEEL_PRELOAD`` lists (comma separated); () when unset or empty."""
    value = (os.environ if env is None else env).get(PRELOAD_ENV, "")
    return tuple(name.strip() for name in value.split(",") if name.strip())


def preload(modules: tuple[str, ...]) -> dict[str, float]:
    """Import ``modules`` in order; return module -> seconds its import took (0 if already loaded).

    A module that cannot be imported is logged and skipped: the task that needs it will raise
    the error itself, in its own log. When MLflow's database stores were imported, their schema
    head is remembered too (:func:`remember_mlflow_schema_head`). Never raises.
    """
    seconds: dict[str, float] = {}
    threads_before = {t.ident for t in threading.enumerate()}
    for name in modules:
        t0 = time.perf_counter()
        try:
            importlib.import_module(name)
        except Exception:
            log.exception("preload: could not import %s; tasks will import it themselves", name)
            continue
        seconds[name] = round(time.perf_counter() - t0, 3)
    if "mlflow.store.db.utils" in sys.modules:
        remember_mlflow_schema_head()
    started = [t.name for t in threading.enumerate() if t.ident not in threads_before]
    if started:
        # A thread does not survive fork(): a child that needs what it guards can hang.
        log.warning("preload: importing %s started threads %s before the fork", list(modules), started)
    log.info("preloaded %d modules in %.1fs: %s", len(seconds), sum(seconds.values()), seconds)
    return seconds


def remember_mlflow_schema_head() -> str | None:
    """Compute MLflow's latest schema revision once per process; return it (None if unknown).

    Every tracking store on a database URI checks the database's schema against the newest of
    MLflow's migration scripts, and finds that by loading all of them (some 70 files, half a second)
    -- once per task process, since each task builds its client. The newest script is a fact of the
    installed MLflow, the same for the whole life of the process and its children: remembering it
    changes no check, the database's own revision is still read each time. Does nothing (and
    returns None) if this MLflow has no such function.
    """
    try:
        from mlflow.store.db import utils
    except ImportError:
        return None
    latest = getattr(utils, "_get_latest_schema_revision", None)
    if latest is None:
        return None
    if not hasattr(latest, "cache_info"):
        latest = functools.cache(latest)
        utils._get_latest_schema_revision = latest
    try:
        return str(latest())
    except Exception:
        log.exception("preload: MLflow's schema head is unknown; each store will look it up")
        return None
