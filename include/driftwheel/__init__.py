"""driftwheel: a continuous-training flywheel for tabular regression models.

One module per stage of the flywheel (sources, validate, store, drift, decide, model, evaluate,
registry, report), composed by :mod:`driftwheel.steps`, which the Airflow DAG tasks, the CLI and
the benchmarks call alike. Nothing in this package imports Airflow.
"""

__version__ = "0.1.0"
