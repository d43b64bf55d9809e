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
from typing import TYPE_CHECKING, Any

import mlflow
import pandas as pd
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.models import Model, infer_signature
from mlflow.pyfunc import PythonModel, PythonModelContext
from mlflow.tracking import MlflowClient

from driftwheel import ledger, locks

if TYPE_CHECKING:
    from driftwheel import model as model_lib

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"
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
def _pip_requirements() -> list[str]:
    import torch  # here, not at import: reading the champion or moving an alias needs no torch

    return [f"torch=={torch.__version__.split('+')[0]}", "pandas<3", "numpy", "pyarrow"]


_MODEL_CODE = Path(__file__).with_name("pyfunc_model.py")


class PopularityModel(PythonModel):
    """A pyfunc that predicts popularity from a DataFrame of raw feature values."""

    def load_context(self, context: PythonModelContext) -> None:
        from driftwheel import model as model_lib

        self._model = model_lib.load({name: Path(path) for name, path in context.artifacts.items()})

    def predict(
        self, context: PythonModelContext, model_input: pd.DataFrame, params: dict[str, Any] | None = None
    ) -> pd.Series:
        return pd.Series(self._model.predict(model_input), index=model_input.index, name="popularity")


def connect(tracking_uri: str) -> MlflowClient:
    """A client for ``tracking_uri`` (tracking and registry alike); MLflow's global URIs are left alone.

    Build it once at the edge (a step, the CLI) and pass it down: everything here that reads or
    writes MLflow takes the client and uses its URIs explicitly.
    """
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
    # What mlflow.pyfunc.log_model does, through this client rather than MLflow's global URIs: a
    # logged model of the run, saved locally, uploaded to the logged model's artifact location.
    experiment_id = client.get_run(run_id).info.experiment_id
    logged = client.create_logged_model(experiment_id, name="model", source_run_id=run_id)
    client.log_outputs(run_id, [LoggedModelOutput(logged.model_id, step=0)])
    with tempfile.TemporaryDirectory() as tmp:
        from driftwheel import model as model_lib

        files = model_lib.save(trained, Path(tmp) / "files")
        local = Path(tmp) / "model"
        mlflow.pyfunc.save_model(
            path=str(local),
            python_model=str(_MODEL_CODE),
            artifacts={k: str(v) for k, v in files.items()},
            signature=signature,
            pip_requirements=_pip_requirements(),
            mlflow_model=Model(
                artifact_path=logged.artifact_location,
                model_uuid=logged.model_id,
                run_id=run_id,
                model_id=logged.model_id,
            ),
        )
        client.log_model_artifacts(logged.model_id, str(local))
    client.finalize_logged_model(logged.model_id, LoggedModelStatus.READY)
    # The version is created with its tags, fingerprint included, in one call: there is no moment
    # at which it exists untagged, so a retry after a crash (kill -9) finds it by fingerprint
    # instead of registering a second one. A crash before this call leaves only a logged model.
    try:
        client.create_registered_model(name)
    except MlflowException as err:
        if err.error_code not in ("RESOURCE_ALREADY_EXISTS", "ALREADY_EXISTS"):
            raise
    # The source is the logged model's storage location, not ``models:/<model_id>``: MLflow's SQL
    # registry resolves the latter through the process-global tracking URI.
    version = client.create_model_version(
        name, logged.artifact_location, run_id=run_id, tags={**tags, T_STATUS: CHALLENGER}, model_id=logged.model_id
    )
    client.set_registered_model_alias(name, CHALLENGER, version.version)
    logger.info("registered %s version %s from run %s", name, version.version, run_id)
    return client.get_model_version(name, version.version)


def _download(client: MlflowClient, version: ModelVersion, dst: Path, path: str = "") -> Path:
    """Download the files of a registered version (or one of them) from the client's store into ``dst``."""
    source = client.get_model_version_download_uri(version.name, str(version.version)).rstrip("/")
    uri = f"{source}/{path}" if path else source
    return Path(
        mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=str(dst), tracking_uri=client.tracking_uri)
    )


def load_trained(client: MlflowClient, version: ModelVersion) -> model_lib.AnyModel:
    """The model object of a registered version, for scoring or fine-tuning, read through ``client``."""
    with tempfile.TemporaryDirectory() as tmp:
        loaded = mlflow.pyfunc.load_model(str(_download(client, version, Path(tmp))))
        return loaded.unwrap_python_model()._model


def input_columns(client: MlflowClient, version: ModelVersion) -> list[str]:
    """The input columns of a registered version's logged signature (its MLmodel file); no model is loaded."""
    with tempfile.TemporaryDirectory() as tmp:
        signature = Model.load(str(_download(client, version, Path(tmp), "MLmodel"))).signature
    return signature.inputs.input_names() if signature is not None else []


@dataclass(frozen=True)
class Promotion:
    promoted: bool
    champion_version: str | None
    previous_version: str | None
    reason: str
    # Refused because another promotion moved the champion since the gate: the version it moved to,
    # against which the challenger can be gated again.
    moved_to: str | None = None


@dataclass(frozen=True)
class Door:
    """What every change of the champion goes through: the lock, and the ledger it appends to."""

    lock_uri: str
    ledger_experiment: str
    lock_timeout: float = locks.DEFAULT_TIMEOUT


def promote(
    client: MlflowClient,
    name: str,
    version: str,
    *,
    gated_against: str | None,
    door: Door,
    period: int | None = None,
    run_id: str | None = None,
    metrics: Mapping[str, float | None] | None = None,
) -> Promotion:
    """Point ``champion`` at ``version`` if the champion is still the one it was gated against.

    Under the promotion lock (one promotion at a time per model, across processes and workers) it
    compares and sets: the current champion must be ``gated_against`` (None: there was none).
    If another promotion moved it since, the promotion is refused with ``moved_to`` set, so the
    caller can gate the challenger again against the new champion (a racing run, or a rerun of a
    period after a data fix facing what that period promoted before); if the champion is trained
    on later periods than the challenger, it is refused for good. Either way the outcome is
    appended to the ledger. The previous champion is recorded on the new one.
    """
    with locks.promotion_lock(door.lock_uri, name, door.lock_timeout):
        candidate = client.get_model_version(name, version)
        current = champion(client, name)
        current_version = str(current.version) if current else None
        if current is not None and current_version == str(candidate.version):
            return Promotion(False, current_version, current.tags.get(T_PREVIOUS_CHAMPION), "already champion")
        refusal = _promotion_refusal(current, candidate, gated_against)
        entry = ledger.Entry(
            action="refused" if refusal else "promote",
            model=name,
            period=period,
            from_version=current_version,
            to_version=str(candidate.version),
            reason=refusal or f"gated against {'v' + gated_against if gated_against else 'no champion'}",
            period_run_id=run_id,
            metrics=dict(metrics or {}),
        )
        if refusal:
            ledger.append(client, door.ledger_experiment, entry)
            logger.warning("promotion of %s v%s refused: %s", name, candidate.version, refusal)
            moved = refusal.startswith(_MOVED) and current_version is not None
            return Promotion(False, current_version, None, refusal, moved_to=current_version if moved else None)
        if current is not None:
            client.set_model_version_tag(name, candidate.version, T_PREVIOUS_CHAMPION, current_version)
            client.set_model_version_tag(name, current.version, T_STATUS, "retired")
        client.set_registered_model_alias(name, CHAMPION, candidate.version)
        client.set_model_version_tag(name, candidate.version, T_STATUS, CHAMPION)
        challenger = _alias(client, name, CHALLENGER)
        if challenger is not None and challenger.version == candidate.version:
            client.delete_registered_model_alias(name, CHALLENGER)
        ledger.append(client, door.ledger_experiment, entry)
    logger.info("promoted %s v%s to champion (previous: %s)", name, candidate.version, current_version)
    return Promotion(True, str(candidate.version), current_version, "promoted")


_MOVED = "the champion moved"


def _trained_through(version: ModelVersion) -> int:
    return int(version.tags.get(T_TRAINED_THROUGH, "0"))


def _promotion_refusal(current: ModelVersion | None, candidate: ModelVersion, gated_against: str | None) -> str | None:
    """Why ``candidate`` may not replace ``current``, or None if it may."""
    if current is None:
        if gated_against is None:
            return None
        return f"the champion v{gated_against} the challenger was gated against is no longer champion (none is)"
    if _trained_through(current) > _trained_through(candidate):
        return (
            f"champion v{current.version} is trained through {_trained_through(current)}, "
            f"newer than this challenger (through {_trained_through(candidate)})"
        )
    if str(current.version) == gated_against:
        return None
    against = f"v{gated_against}" if gated_against else "no champion"
    return f"{_MOVED}: the challenger was gated against {against}, the champion is now v{current.version}"


def reject(
    client: MlflowClient,
    name: str,
    version: str | None,
    reason: str,
    *,
    door: Door,
    period: int | None = None,
    run_id: str | None = None,
    champion_version: str | None = None,
    metrics: Mapping[str, float | None] | None = None,
) -> None:
    """Mark ``version`` rejected (None: no model was registered) and append it to the ledger."""
    if version is not None:
        client.set_model_version_tag(name, version, T_STATUS, "rejected")
        client.set_model_version_tag(name, version, "flywheel.rejected_because", reason[:500])
    ledger.append(
        client,
        door.ledger_experiment,
        ledger.Entry(
            action="reject",
            model=name,
            period=period,
            from_version=champion_version,
            to_version=version,
            reason=reason,
            period_run_id=run_id,
            metrics=dict(metrics or {}),
        ),
    )


def rollback(client: MlflowClient, name: str, *, reason: str, door: Door, to_version: str | None = None) -> Promotion:
    """Restore an earlier champion through the same door as a promotion (lock, ledger).

    ``to_version`` defaults to the version the current champion replaced. Only a version that was
    champion before can be restored: a rollback is no way around the gate.
    """
    with locks.promotion_lock(door.lock_uri, name, door.lock_timeout):
        current = champion(client, name)
        if current is None:
            raise LookupError(f"{name} has no champion to roll back")
        target_version = to_version or current.tags.get(T_PREVIOUS_CHAMPION)
        if not target_version:
            raise LookupError(f"{name} v{current.version} replaced no earlier champion; give the version to restore")
        if str(target_version) == str(current.version):
            raise ValueError(f"v{target_version} is already the champion of {name}")
        try:
            target = client.get_model_version(name, str(target_version))
        except MlflowException as err:
            raise LookupError(f"{name} has no version {target_version}") from err
        if target.tags.get(T_STATUS) not in _FORMER_CHAMPION:
            raise ValueError(
                f"{name} v{target.version} was never champion (status {target.tags.get(T_STATUS)!r}); "
                "only a former champion can be restored"
            )
        client.set_registered_model_alias(name, CHAMPION, target.version)
        client.set_model_version_tag(name, current.version, T_STATUS, "rolled back")
        client.set_model_version_tag(name, target.version, T_STATUS, CHAMPION)
        ledger.append(
            client,
            door.ledger_experiment,
            ledger.Entry(
                action="rollback",
                model=name,
                period=None,
                from_version=str(current.version),
                to_version=str(target.version),
                reason=reason,
            ),
        )
    logger.warning("rolled %s back from v%s to v%s: %s", name, current.version, target.version, reason)
    return Promotion(True, str(target.version), str(current.version), f"rolled back: {reason}")


# Statuses of versions that have been champion: only these can be restored by a rollback.
_FORMER_CHAMPION = frozenset({"retired", "rolled back", CHAMPION})
