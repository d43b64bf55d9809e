"""driftwheel_ops: the operations tooling around the flywheel, not the flywheel itself.

It starts, supervises and stops Airflow and MLflow processes (``local_stack``: the embedded default
behind ``make demo``/``make ui``; ``native_stack``: the Celery server topology behind
``scripts/stack.sh``) and holds the ``python -m driftwheel`` command line (``cli``). It uses the
:mod:`driftwheel` library; the library never imports it (``tests/test_library_boundaries.py``).
"""
