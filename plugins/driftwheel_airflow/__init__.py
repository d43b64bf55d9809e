"""What Airflow's own processes import by name from their settings, and nothing else imports.

* :mod:`driftwheel_airflow.preloading_executor`: ``[core] executor`` of the embedded stack;
* :mod:`driftwheel_airflow.celery_preload`: in Celery's ``imports`` on the native stack's workers.

Both preload the tasks' libraries (:mod:`driftwheel_ops.preload`) before task processes are forked.
Unlike :mod:`driftwheel_ops`, which drives Airflow from outside through its CLI and REST API and so
never imports it, this package runs inside Airflow and may import it: that is why it lives in
plugins/ (on every Airflow process's PYTHONPATH; ``plugins/.airflowignore`` keeps the plugins manager
from loading it as a plugin) and not in include/, where nothing imports airflow.
"""
