"""The compose stack's ``mlflow-init`` job (``python -m driftwheel_ops.mlflow_users``): its refusals.

Creating the user against a real MLflow server is exercised by ``scripts/stack.sh up`` in
tests/e2e/test_native_stack.py, which calls the same :func:`provision_task_user`.
"""

from __future__ import annotations

import pytest

from driftwheel_ops import mlflow_users


def test_missing_settings_are_named_and_nothing_is_called(capsys: pytest.CaptureFixture[str]) -> None:
    assert mlflow_users.main({"MLFLOW_TRACKING_URI": "http://127.0.0.1:9"}) == 1
    assert "MLFLOW_ADMIN_PASSWORD, MLFLOW_TASK_PASSWORD not set" in capsys.readouterr().err


def test_the_task_user_cannot_be_the_admin(capsys: pytest.CaptureFixture[str]) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", "MLFLOW_ADMIN_PASSWORD": "a" * 20,
           "MLFLOW_TASK_PASSWORD": "b" * 20, "MLFLOW_TASK_USER": "admin"}  # fmt: skip
    assert mlflow_users.main(env) == 1
    assert "must not be MLflow's admin" in capsys.readouterr().err


def test_an_unreachable_server_is_an_error_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    env = {
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:9",
        "MLFLOW_ADMIN_PASSWORD": "a" * 20,
        "MLFLOW_TASK_PASSWORD": "b" * 20,
    }
    assert mlflow_users.main(env) == 1
    assert capsys.readouterr().err.startswith("mlflow-init: ")
