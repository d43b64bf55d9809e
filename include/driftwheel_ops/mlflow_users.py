"""The tasks' own MLflow user: no admin, EDIT on every experiment and registered model.

MLflow's basic-auth app creates only its ``admin``. The tasks log runs and register models as a
user of their own (``flywheel``), created here through the app's REST API as ``admin``: the native
stack calls :func:`provision_task_user` on ``scripts/stack.sh up``; docker-compose.yaml runs this
module once as its ``mlflow-init`` service::

    MLFLOW_TRACKING_URI=http://mlflow:5000 MLFLOW_ADMIN_PASSWORD=... MLFLOW_TASK_PASSWORD=... \\
        python -m driftwheel_ops.mlflow_users

Passwords come from the environment only, never from the command line. Running it again is
harmless: an existing user gets the given password, grants that exist stay.

This module never imports airflow or mlflow.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

log = logging.getLogger(__name__)

MLFLOW_ADMIN = "admin"
TASK_USER = "flywheel"


class ProvisionError(RuntimeError):
    """MLflow refused to create the user, set its password or grant it a permission."""


def provision_task_user(mlflow_url: str, admin: tuple[str, str], user: tuple[str, str]) -> None:
    """Create ``user`` (or reset its password) and grant it EDIT on every experiment and registered
    model, as ``admin``. Raises :class:`ProvisionError` with MLflow's answer when refused."""
    name, password = user
    status, body = _call(mlflow_url, "POST", "/api/2.0/mlflow/users/create", admin,
                         {"username": name, "password": password})  # fmt: skip
    if status != 200:
        if "RESOURCE_ALREADY_EXISTS" not in body and "already exists" not in body:
            raise ProvisionError(f"MLflow refused to create user {name!r}: {status} {body}")
        status, body = _call(mlflow_url, "PATCH", "/api/2.0/mlflow/users/update-password", admin,
                             {"username": name, "password": password})  # fmt: skip
        if status != 200:
            raise ProvisionError(f"MLflow refused to set the password of {name!r}: {status} {body}")
    for resource_type in ("experiment", "registered_model"):
        grant = {"username": name, "resource_type": resource_type, "resource_id": "*", "permission": "EDIT"}
        status, body = _call(mlflow_url, "POST", "/api/3.0/mlflow/users/permissions/grant", admin, grant)
        if status != 200 and "already exists" not in body:
            raise ProvisionError(f"MLflow refused to grant {name!r} EDIT on {resource_type}s: {status} {body}")
    log.info("MLflow user %s (EDIT on every experiment and model) ready", name)


def _call(mlflow_url: str, method: str, path: str, auth: tuple[str, str], body: Mapping[str, Any]) -> tuple[int, str]:
    """(status, response text) of a JSON call to the MLflow server with basic auth."""
    token = base64.b64encode(f"{auth[0]}:{auth[1]}".encode()).decode()
    req = urllib.request.Request(
        mlflow_url.rstrip("/") + path, data=json.dumps(dict(body)).encode(), method=method,
        headers={"Authorization": f"Basic {token}", "Content-Type": "application/json"},
    )  # fmt: skip
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return int(resp.status), resp.read().decode(errors="replace")
    except urllib.error.HTTPError as err:
        return int(err.code), err.read().decode(errors="replace")


def main(env: Mapping[str, str] | None = None) -> int:
    """Provision the task user from MLFLOW_TRACKING_URI, MLFLOW_ADMIN_PASSWORD, MLFLOW_TASK_PASSWORD
    (and MLFLOW_TASK_USER, default ``flywheel``). Exit 1 naming what is missing or refused."""
    env = os.environ if env is None else env
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    names = ("MLFLOW_TRACKING_URI", "MLFLOW_ADMIN_PASSWORD", "MLFLOW_TASK_PASSWORD")
    missing = [name for name in names if not env.get(name)]
    if missing:
        print(f"mlflow-init: {', '.join(missing)} not set", file=sys.stderr)
        return 1
    user = env.get("MLFLOW_TASK_USER") or TASK_USER
    if user == MLFLOW_ADMIN:
        print("mlflow-init: MLFLOW_TASK_USER must not be MLflow's admin", file=sys.stderr)
        return 1
    try:
        provision_task_user(
            env["MLFLOW_TRACKING_URI"],
            (MLFLOW_ADMIN, env["MLFLOW_ADMIN_PASSWORD"]),
            (user, env["MLFLOW_TASK_PASSWORD"]),
        )
    except (ProvisionError, OSError) as err:
        print(f"mlflow-init: {err}", file=sys.stderr)
        return 1
    print(f"mlflow-init: MLflow user {user!r} ready (EDIT on every experiment and registered model)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
