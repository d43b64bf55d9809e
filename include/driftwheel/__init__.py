"""driftwheel: a continuous-training flywheel for tabular regression models.

One module per stage of the flywheel (sources, validate, store, drift, decide, model, evaluate,
registry, report), composed by :mod:`driftwheel.steps`, which the Airflow DAG tasks and the
benchmark call alike (the command line only runs the DAG, and its ``history`` and ``rollback``
commands call those two steps). Nothing in this package imports Airflow.
"""

__version__ = "0.1.0"
