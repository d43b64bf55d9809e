"""Imported by each Celery worker of the native stack when it starts, for its effect: the preload.

:class:`driftwheel_ops.native_stack.NativeStack` lists this module in Celery's ``imports`` setting
(``AIRFLOW__CELERY__EXTRA_CELERY_CONFIG``). A Celery worker imports those modules in its main process
before its prefork pool forks the processes that run Airflow's task supervisors, which fork the task
processes: the modules ``DRIFTWHEEL_PRELOAD`` names are then imported once per worker instead of once
per task (see :mod:`driftwheel_ops.preload`). Nothing else should import this module.
"""

from __future__ import annotations

from driftwheel_ops.preload import modules_from_env, preload

PRELOADED = preload(modules_from_env())
