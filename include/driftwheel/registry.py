"""The MLflow Model Registry: model versions, their lineage tags, and the champion/challenger aliases.

Aliases, not the deprecated stages. Every version records the periods it was trained on, its
strategy, its parent version and a fingerprint of its inputs (so a rerun finds it instead of
registering a duplicate). Promotion records the previous champion on the new one, so it can be
restored, and lets :func:`champion_for_period` walk back to the model that was in production
when a period arrived.
"""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.tracking import MlflowClient

from driftwheel import model as model_lib

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
TAG_PREFIX = "flywheel."
T_PERIOD = "flywheel.period"
T_TRAINED_THROUGH = "flywheel.trained_through"
T_TRAINING_PERIODS = "flywheel.training_periods"
T_STRATEGY = "flywheel.strategy"
T_PARENT = "flywheel.parent_version"
T_FINGERPRINT = "flywheel.fingerprint"
T_HOLDOUT_RMSE = "flywheel.holdout_rmse"
T_PREVIOUS_CHAMPION = "flywheel.previous_champion"
T_STATUS = "flywheel.status"

# What the logged model needs at load time besides this package (see README: models load where
# driftwheel is importable, as in the DAG's workers and the benchmark).
_PIP_REQUIREMENTS = [f"torch=={__import__('torch').__version__.split('+')[0]}", "pandas<3", "numpy", "pyarrow"]


_MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


class PopularityModel(PythonModel):
    """A pyfunc that predicts popularity from a DataFrame of raw feature values."""

    def load_context(self, context: PythonModelContext) -> None:
        self._model = model_lib.load({name: Path(path) for name, path in context.artifacts.items()})

    def predict(self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.Series:
        return pd.Series(self._model.predict(model_input), index=model_input.index, name="popularity")


def connect(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri``; also points the fluent API (used to log models) at it."""
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(tracking_uri)
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)


def _alias(client: MlflowClient, name: str, alias: str) -> ModelVersion | None:
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def champion(client: MlflowClient, name: str) -> ModelVersion | None:
    return _alias(client, name, CHAMPION)


def champion_for_period(client: MlflowClient, name: str, period: int) -> ModelVersion | None:
    """The model that was in production when ``period`` arrived: never one that saw its labels.

    That is the champion, unless it was trained on ``period`` or later (a rerun of an old period),
    in which case the chain of previous champions is followed back.
    """
    version = champion(client, name)
    while version is not None and int(version.tags.get(T_TRAINED_THROUGH, "0")) >= period:
        previous = version.tags.get(T_PREVIOUS_CHAMPION)
        version = client.get_model_version(name, previous) if previous else None
    return version


def find_version(client: MlflowClient, name: str, fingerprint: str) -> ModelVersion | None:
    """The version registered from exactly these inputs, if a previous run already trained it."""
    try:
        hits = client.search_model_versions(f"name = '{name}' and tags.`{T_FINGERPRINT}` = '{fingerprint}'")
    except MlflowException:
        return None
    return min(hits, key=lambda v: int(v.version)) if hits else None


def log_and_register(
    trained: model_lib.AnyModel,
    example: pd.DataFrame,
    *,
    client: MlflowClient,
    name: str,
    run_id: str,
    tags: Mapping[str, str],
) -> ModelVersion:
    """Log ``trained`` as a pyfunc in run ``run_id``, register it under ``name`` and tag the version.

    ``example`` is a few training rows; the dtypes of the model's input columns become its
    signature. Everything the model derived from labels (scalers, label history, replay rows)
    is among its artifacts, so ``models:/<name>@champion`` predicts from raw columns.
    """
    # The signature takes the curated dtypes (validation coerces them), e.g. integer `key`.
    signature = infer_signature(example[list(trained.input_columns)])
    with tempfile.TemporaryDirectory() as tmp, mlflow.start_run(run_id=run_id):
        files = model_lib.save(trained, Path(tmp))
        info = mlflow.pyfunc.log_model(
            name="model",
            python_model=str(_MODEL_CODE),
            artifacts={k: str(v) for k, v in files.items()},
            signature=signature,
            pip_requirements=_PIP_REQUIREMENTS,
            registered_model_name=name,
        )
    version = client.get_model_version(name, str(info.registered_model_version))
    for key, value in tags.items():
        client.set_model_version_tag(name, version.version, key, value)
    client.set_model_version_tag(name, version.version, T_STATUS, CHALLENGER)
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    logger.info("registered %s version %s from run %s", name, version.version, run_id)
    return client.get_model_version(name, version.version)


def load_trained(version: ModelVersion) -> model_lib.AnyModel:
    """The model object of a registered version, for scoring or fine-tuning."""
    loaded = mlflow.pyfunc.load_model(f"models:/{version.name}/{version.version}")
    return loaded.unwrap_python_model()._model


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    champion_version: str
    previous_version: str | None
    reason: str


def promote(client: MlflowClient, name: str, version: str) -> Promotion:
    """Point ``champion`` at ``version``, recording the previous champion on it.

    A version trained on older periods than the current champion is not promoted: rerunning an
    old period must not roll production back.
    """
    candidate = client.get_model_version(name, version)
    current = champion(client, name)
    if current is not None and current.version == candidate.version:
        return Promotion(False, str(current.version), current.tags.get(T_PREVIOUS_CHAMPION), "already champion")
    if current is not None and int(current.tags.get(T_TRAINED_THROUGH, "0")) >= int(candidate.tags.get(T_TRAINED_THROUGH, "0")):
        return Promotion(
            False,
            str(current.version),
            None,
            f"champion v{current.version} is trained through {current.tags.get(T_TRAINED_THROUGH)}, "
            "newer than this challenger",
        )
    if current is not None:
        client.set_model_version_tag(name, candidate.version, T_PREVIOUS_CHAMPION, str(current.version))
        client.set_model_version_tag(name, current.version, T_STATUS, "retired")
    client.set_registered_model_alias(name, CHAMPION, candidate.version)
    client.set_model_version_tag(name, candidate.version, T_STATUS, CHAMPION)
    if _alias(client, name, CHALLENGER) and _alias(client, name, CHALLENGER).version == candidate.version:
        client.delete_registered_model_alias(name, CHALLENGER)
    logger.info("promoted %s v%s to champion (previous: %s)", name, candidate.version, current.version if current else None)
    return Promotion(True, str(candidate.version), str(current.version) if current else None, "promoted")


def reject(client: MlflowClient, name: str, version: str, reason: str) -> None:
    client.set_model_version_tag(name, version, T_STATUS, "rejected")
    client.set_model_version_tag(name, version, "flywheel.rejected_because", reason[:500])


def restore_previous_champion(client: MlflowClient, name: str) -> ModelVersion:
    """Roll the champion back to the version it replaced; return the restored version."""
    current = champion(client, name)
    if current is None or not current.tags.get(T_PREVIOUS_CHAMPION):
        raise LookupError(f"{name} has no previous champion to restore")
    previous = client.get_model_version(name, current.tags[T_PREVIOUS_CHAMPION])
    client.set_registered_model_alias(name, CHAMPION, previous.version)
    client.set_model_version_tag(name, current.version, T_STATUS, "rolled back")
    client.set_model_version_tag(name, previous.version, T_STATUS, CHAMPION)
    return client.get_model_version(name, previous.version)
