"""Airflow's LocalExecutor, with the tasks' libraries imported before it forks its workers.

``AIRFLOW__CORE__EXECUTOR=driftwheel_airflow.preloading_executor.PreloadingLocalExecutor`` (what
:class:`driftwheel_ops.local_stack.LocalStack` sets). With the ``fork`` start method (Linux) the
LocalExecutor forks all its workers from the scheduler in :meth:`start`, and each worker's task
supervisor forks the task process from the worker: modules imported in the scheduler right before
are in every task process without being imported again (see :mod:`driftwheel_ops.preload` for which
ones and why that is fork-safe). With ``spawn`` (macOS) workers start a fresh interpreter: nothing is
preloaded, the executor behaves as the LocalExecutor.
"""

from __future__ import annotations

from airflow.executors.local_executor import LocalExecutor

from driftwheel_ops.preload import modules_from_env, preload


class PreloadingLocalExecutor(LocalExecutor):
    """The LocalExecutor; :meth:`start` first imports the modules ``DRIFTWHEEL_PRELOAD`` names."""

    def start(self) -> None:
        if self.is_mp_using_fork:
            preload(modules_from_env())
        super().start()
