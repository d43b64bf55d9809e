"""The flywheel's steps, one function per DAG task, each returning a small JSON-able dict.

These compose the stage modules; the DAG tasks, the in-process replay and the benchmark call them
alike. A step is an edge: it builds the one MLflow client it needs from the settings and passes
it to every helper below it (nothing relies on MLflow's process-global URIs).
Every step is keyed by the period and idempotent: a rerun overwrites its artifacts, logs into the
same MLflow run and reuses a model version trained from the same inputs.

Every DAG task is a fresh process, so MLflow, Evidently and torch (seconds of import each) are
imported only by the steps that use them: ingesting and validating a batch needs none of them.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from driftwheel import decide, evaluate, sources, store, validate
from driftwheel.config import Settings
from driftwheel.decide import Decision, DriftSummary

if TYPE_CHECKING:
    from mlflow.entities.model_registry import ModelVersion
    from mlflow.tracking import MlflowClient

    from driftwheel.registry import Door
    from driftwheel.sources.spotify import SpotifyCredentials

logger = logging.getLogger(__name__)


# -- shared plumbing ---------------------------------------------------------------------------
def _client(settings: Settings) -> MlflowClient:
    """The step's MLflow client: built once at the top of a step, passed to every helper."""
    from driftwheel import registry

    return registry.connect(settings.tracking_uri)


def _experiment(settings: Settings, client: MlflowClient) -> str:
    from driftwheel import report

    uri = settings.tracking_uri
    artifacts = None if uri.startswith(("http://", "https://")) else settings.artifact_location
    return report.experiment_id(client, settings.experiment_name, artifacts)


def _features(frame: pd.DataFrame, settings: Settings) -> tuple[str, ...]:
    return tuple(f for f in settings.dataset.features if f in frame.columns)


def _door(settings: Settings) -> Door:
    from driftwheel import ledger, registry

    return registry.Door(settings.promotion_lock_uri, ledger.experiment_name(settings.experiment_name))


class PeriodRefused(ValueError):
    """A run for a period the flywheel must not process now (it would skip periods)."""


def check_period(settings: Settings, period: int) -> None:
    """Refuse a period that would skip a period or overtake one still running: periods go in order.

    Rerunning any processed period is fine (after a data fix, say); so is the next one once the
    previous period's run has finished. A run for a later period (a manual run for 2030), or for the
    next period while the previous one is still running or has failed (a manual run triggered during
    a backfill, which Airflow runs beside the backfill's own runs), would train and promote a model
    that locks the earlier period out, so it is refused before it touches anything.
    """
    processed = store.available_periods(settings.curated_dir)
    if processed and period > processed[-1] + 1:
        raise PeriodRefused(
            f"period {period} is beyond the next period: the flywheel has processed up to {processed[-1]}; "
            f"run {processed[-1] + 1} first (periods are processed in order, without gaps)"
        )
    unfinished = store.in_progress(settings.curated_dir, period - 1)
    if unfinished is not None:
        raise PeriodRefused(
            f"period {period - 1} has not finished (its run {unfinished.get('run') or '?'} started at "
            f"{unfinished.get('started_at') or '?'} is still running, or it failed): wait for it, or rerun "
            f"{period - 1} first, then {period} (periods are processed in order)"
        )


# -- ingest and validate -------------------------------------------------------------------------
def ingest_tracks(
    settings: Settings, period: int, credentials: SpotifyCredentials | None = None, run: str | None = None
) -> dict[str, Any]:
    """Land the period's raw data (the synthetic source generates it, the Spotify source fetches it
    with ``credentials``, the file source checks it). The result holds no credentials.

    Raises :class:`PeriodRefused` for a period beyond the next one (see :func:`check_period`), and
    :class:`driftwheel.config.DataError` (an unreadable landing file, a wrong column map) when the
    data or its configuration must be fixed: retrying cannot help.
    """
    check_period(settings, period)
    landed = sources.land_period(settings, period, credentials)
    # Landed: from here until finish_period the period is in progress (a failure leaves it so).
    store.mark_in_progress(settings.curated_dir, period, run)
    return {"period": period, "landing_dir": str(landed.landing_dir), "files": [p.name for p in landed.files]}


def _champion_inputs(client: MlflowClient, settings: Settings, period: int) -> tuple[str, list[str]] | None:
    """(version, input columns) of the model in production when ``period`` arrived; None without one.

    The columns come from the version's logged signature (its MLmodel file): no model is loaded.
    """
    from driftwheel import registry

    champion = registry.champion_for_period(client, settings.model_name, period)
    if champion is None:
        return None
    return str(champion.version), registry.input_columns(client, champion)


def validate_tracks(settings: Settings, period: int) -> dict[str, Any]:
    """Validate the landed batch; curate the good rows, quarantine the bad ones.

    Raises :class:`driftwheel.validate.BatchRejected` when the batch is unusable, including when
    it lacks an input column of the champion that will score it. The rows found bad are written
    to quarantine first; the curated data of the period and the landing files are not touched.
    """
    batch = sources.read_period(settings, period)
    try:
        result = validate.validate_batch(batch, settings.dataset, settings.validation)
    except validate.BatchRejected as rejected:
        path = store.write_quarantine(settings.quarantine_dir, period, rejected.quarantined)
        logger.warning("batch %s rejected; %d bad rows quarantined at %s", period, len(rejected.quarantined), path)
        raise
    quarantine = store.write_quarantine(settings.quarantine_dir, period, result.quarantined)
    champion = _champion_inputs(_client(settings), settings, period)
    if champion is not None:
        files = ", ".join(p.name for p in batch.files)
        validate.require_features(result.valid.columns, champion[1], champion[0], f"{period} batch ({files})")
    curated = store.write_partition(settings.curated_dir, period, result.valid)
    return {
        "period": period,
        "rows": len(result.valid),
        "quarantined": len(result.quarantined),
        "curated_path": str(curated),
        "quarantine_path": str(quarantine) if quarantine else None,
        "features": list(result.features),
    }


# -- drift and decision --------------------------------------------------------------------------
def _scores_path(settings: Settings, period: int, version: str, current: pd.DataFrame) -> Path:
    """Where the champion's predictions for the period's curated rows are kept.

    The name holds the version and a hash of the rows scored: a rerun after a data fix, or another
    champion, never finds predictions of other rows or of another model.
    """
    digest = int(pd.util.hash_pandas_object(current, index=False).sum()) & (2**63 - 1)
    return store.partition_path(settings.state_dir / "scores", period, f"champion-v{version}-{digest:016x}.parquet")


def _keep_champion_scores(
    settings: Settings, period: int, version: str, current: pd.DataFrame, predictions: np.ndarray
) -> None:
    """Keep the champion's predictions of the period (atomically) for the gate; drop older ones."""
    path = _scores_path(settings, period, version, current)
    store.write_frame(pd.DataFrame({"prediction": np.asarray(predictions, dtype=float)}), path)
    for stale in path.parent.glob("champion-v*.parquet"):
        if stale != path:
            stale.unlink(missing_ok=True)


def _champion_predictions(
    client: MlflowClient, settings: Settings, period: int, champion: ModelVersion, current: pd.DataFrame
) -> np.ndarray:
    """The champion's predictions for every row of ``current``: those :func:`report_drift` kept,
    else (another champion than the run's, a file lost) the model loaded and scored now."""
    from driftwheel import registry

    path = _scores_path(settings, period, str(champion.version), current)
    if path.exists():
        return pd.read_parquet(path)["prediction"].to_numpy()
    logger.info("period %s: scoring champion v%s (no kept predictions at %s)", period, champion.version, path)
    return np.asarray(registry.load_trained(client, champion).predict(current), dtype=float)


def report_drift(settings: Settings, period: int, run_tags: dict[str, str] | None = None) -> dict[str, Any]:
    """Drift of the period against the last labelled periods, and the champion's production RMSE.

    The champion is scored on the whole new period before anything is trained on it; its
    predictions are kept (under the state's ``scores/year=<period>``) for the gate. The reference
    periods are :func:`driftwheel.drift.reference_periods`. Returns the :class:`DriftSummary`
    fields plus the MLflow run id of the period and the report's path.
    """
    from driftwheel import drift as drift_lib
    from driftwheel import registry, report

    client = _client(settings)
    run_id = report.period_run(
        client, _experiment(settings, client), period, {"flywheel.source": settings.source, **(run_tags or {})}
    )
    current = store.read_partition(settings.curated_dir, period)
    spec = settings.dataset
    champion = registry.champion_for_period(client, settings.model_name, period)

    reference_periods = drift_lib.reference_periods(
        store.available_periods(settings.curated_dir), period, settings.drift.reference_window
    )
    drift = None
    if reference_periods:
        features = _features(current, settings)
        compared = [spec.id_column, *features, spec.target]
        sample = settings.drift.report_rows
        # One reference period in memory at a time (the reference window of a million-row source
        # is several million rows); the sample is the one of the pooled periods.
        reference = drift_lib.sample_pooled(
            (store.read_partition(settings.curated_dir, p, compared) for p in sorted(set(reference_periods))),
            sample,
            spec.id_column,
        )
        drift = drift_lib.drift_report(
            drift_lib.sample_rows(current[compared], sample, spec.id_column),
            reference,
            features,
            spec.target,
            settings.reports_dir / f"year={period}",
            settings.drift,
            period=period,
            reference_periods=reference_periods,
        )
        del reference
        client.log_artifact(run_id, str(drift.html_path), "drift")
        client.log_artifact(run_id, str(drift.json_path), "drift")

    production_rmse = None
    holdout_rmse = None
    if champion is not None:
        # The champion scores the period once: the gate judges it on these predictions too.
        predictions = np.asarray(registry.load_trained(client, champion).predict(current), dtype=float)
        _keep_champion_scores(settings, period, str(champion.version), current, predictions)
        production_rmse = evaluate.rmse(current[spec.target], predictions)
        holdout_rmse = (
            float(champion.tags[registry.T_HOLDOUT_RMSE]) if registry.T_HOLDOUT_RMSE in champion.tags else None
        )

    # The baseline on the same rows as the champion, so the table and the timeline show at a glance
    # whether production beats "last year's mean" (the gate's baseline, scored on the whole year).
    previous_mean = evaluate.previous_level(settings.curated_dir, period, spec.target)
    baseline_rmse = (
        None if previous_mean is None else evaluate.rmse(current[spec.target], np.full(len(current), previous_mean))
    )

    summary = DriftSummary(
        period=period,
        rows=len(current),
        drift_share=drift.drift_share if drift else None,
        drifted_columns=drift.drifted_columns if drift else None,
        target_drift_score=drift.target_drift_score if drift else None,
        target_drifted=drift.target_drifted if drift else None,
        production_rmse=production_rmse,
        champion_version=str(champion.version) if champion else None,
        champion_holdout_rmse=holdout_rmse,
        champion_trained_through=(
            int(champion.tags[registry.T_TRAINED_THROUGH])
            if champion is not None and registry.T_TRAINED_THROUGH in champion.tags
            else None
        ),
    )
    report.record(
        client,
        run_id,
        metrics={
            "rows": summary.rows,
            "drift_share": summary.drift_share,
            "drifted_columns": summary.drifted_columns,
            "target_drift_score": summary.target_drift_score,
            "production_rmse": production_rmse,
            "baseline_production_rmse": baseline_rmse,
        },
        tags={
            report.T_TARGET_DRIFTED: summary.target_drifted,
            report.T_DRIFT_REPORT: str(drift.html_path) if drift else None,
            "flywheel.production_champion": summary.champion_version,
            "flywheel.reference_periods": ",".join(map(str, reference_periods)) or None,
            # What the drift numbers are: distances (larger = more drift), the same at every size.
            "flywheel.drift_tests": (
                f"{settings.drift.numeric_method} (numeric, target), {settings.drift.categorical_method} "
                f"(categorical), drift at >= {settings.drift.drift_threshold:g}"
            )
            if drift
            else None,
        },
    )
    if champion is not None and production_rmse is not None:
        logger.info("champion v%s on %s before retraining: RMSE %.2f", champion.version, period, production_rmse)
    return {
        **dataclasses.asdict(summary),
        "mlflow_run_id": run_id,
        "report_html": str(drift.html_path) if drift else None,
    }


def decide_retrain(settings: Settings, drift_summary: dict[str, Any]) -> Decision:
    """The pure decision on the summary, recorded on the period's run."""
    from driftwheel import report

    fields = {f.name for f in dataclasses.fields(DriftSummary)}
    summary = DriftSummary(**{k: v for k, v in drift_summary.items() if k in fields})
    decision = decide.should_retrain(
        summary,
        settings.drift,
        warmup_end=settings.training.warmup_end,
        force=settings.force_retrain,
        min_rows=settings.gate.min_batch_rows,
    )
    report.record(
        _client(settings),
        drift_summary["mlflow_run_id"],
        tags={
            report.T_DECISION: decision.action,
            report.T_DECISION_REASON: decision.reason[:500],
            report.T_DECISION_RULE: decision.rule,
        },
    )
    logger.info("period %s: %s (%s)", summary.period, decision.action, decision.reason)
    return decision


# -- retrain, gate, promote ------------------------------------------------------------------------
def retrain_model(settings: Settings, period: int, run_id: str, champion_version: str | None = None) -> dict[str, Any]:
    """Train a challenger for ``period`` and register it (alias ``challenger``).

    ``trend_residual`` (the default) fine-tunes the production model on the period's training
    split plus replayed earlier rows, after adding every labelled period it has not seen to its
    label history; from scratch (a cold start, ``fine_tune`` off, or a champion of another kind)
    it trains on all periods since ``warmup_start``. ``transfer`` fine-tunes the study network on
    the period's training split (plus a replay sample of earlier periods if configured); ``full``,
    and a cold start, train it from scratch — a cold start on the pooled warm-up periods. The
    period's held-out split is never fitted. A version trained from identical inputs before is
    reused, not registered again. ``champion_version`` is the champion the run resolved once, at
    its start (:func:`report_drift`); the fine-tune starts from it whatever moved since.

    A model that predicts a non-finite value for any held-out row of the period is not
    registered: the result then has ``version`` None and the reason in ``refused``.
    """
    from driftwheel import model as model_lib
    from driftwheel import planners, registry, report

    client = _client(settings)
    parent = client.get_model_version(settings.model_name, champion_version) if champion_version else None
    parent_model = registry.load_trained(client, parent) if parent is not None else None
    plan = planners.plan(settings, period, parent, parent_model)

    existing = registry.find_version(client, settings.model_name, plan.fingerprint)
    if existing is not None:
        logger.info("period %s: version %s was trained from the same inputs; reusing it", period, existing.version)
        report.record(client, run_id, tags={report.T_CHALLENGER: existing.version})
        return {"version": str(existing.version), "strategy": plan.strategy, "reused": True, "train_seconds": 0.0}

    trained = plan.train()
    # Free the training rows and the parent's label history before the period is read again.
    plan, parent_model = plan.spent(), None
    current = store.read_partition(settings.curated_dir, period)
    held_out = evaluate.holdout_mask(current[settings.dataset.id_column], settings.gate.holdout_fraction)
    # Only finiteness is asked of these rows, so only they are featurized and scored.
    predictions = np.asarray(model_lib.predict_rows(trained, current, held_out), dtype=float)
    if not np.isfinite(predictions).all():
        bad = int((~np.isfinite(predictions)).sum())
        reason = f"the {plan.strategy} model predicts non-finite values for {bad} of {len(predictions)} held-out rows"
        logger.error("period %s: %s; not registered", period, reason)
        report.record(client, run_id, tags={"flywheel.retrain_refused": reason})
        return {"version": None, "refused": reason, "strategy": plan.strategy, "reused": False, "train_seconds": 0.0}
    version = registry.log_and_register(
        trained,
        plan.example,
        client=client,
        name=settings.model_name,
        run_id=run_id,
        tags={
            registry.T_PERIOD: str(period),
            registry.T_TRAINED_THROUGH: str(period),
            registry.T_TRAINING_PERIODS: ",".join(map(str, plan.training_periods)),
            registry.T_STRATEGY: plan.strategy,
            registry.T_PARENT: str(parent.version) if parent else "",
            registry.T_FINGERPRINT: plan.fingerprint,
            "flywheel.train_rows": str(plan.train_rows),
        },
    )
    feature_seconds = getattr(trained, "feature_seconds", None)  # the trend_residual model builds features
    report.record(
        client,
        run_id,
        metrics={
            "train_seconds": trained.train_seconds,
            "feature_seconds": feature_seconds,
            "train_rows": plan.train_rows,
            "final_train_loss": trained.epoch_losses[-1] if trained.epoch_losses else None,
        },
        tags={report.T_CHALLENGER: version.version, "flywheel.strategy": plan.strategy},
    )
    return {
        "version": str(version.version),
        "strategy": plan.strategy,
        "reused": False,
        "train_seconds": round(trained.train_seconds, 3),
        "feature_seconds": round(feature_seconds or 0.0, 3),
        "from_scratch": plan.from_scratch,
    }


def evaluate_challenger(
    settings: Settings,
    period: int,
    run_id: str,
    version: str | None,
    champion_version: str | None = None,
    refused: str | None = None,
) -> dict[str, Any]:
    """The gate on the period's held-out split: challenger vs the run's champion vs baseline.

    ``champion_version`` is the champion the run resolved at its start; its predictions are the
    ones :func:`report_drift` kept. The baseline is :func:`driftwheel.evaluate.baseline_level`.
    A challenger that was not registered (``version`` None, ``refused`` says why) fails the gate
    with that reason. Returns the :class:`~driftwheel.evaluate.GateResult` fields, the number of
    held-out rows and the version.
    """
    return _gate(_client(settings), settings, period, run_id, version, champion_version, refused)


def _gate(
    client: MlflowClient,
    settings: Settings,
    period: int,
    run_id: str,
    version: str | None,
    champion_version: str | None,
    refused: str | None = None,
) -> dict[str, Any]:
    from driftwheel import model as model_lib
    from driftwheel import registry, report

    if version is None:
        reason = f"no challenger: {refused or 'none was registered'}"
        report.record(
            client,
            run_id,
            tags={report.T_GATE: "rejected", report.T_GATE_REASON: reason[:500], report.T_GATE_RULE: "no_challenger"},
        )
        return {"passed": False, "reason": reason, "challenger_rmse": None, "champion_rmse": None,
                "baseline_rmse": None, "holdout_rows": 0, "vs_champion": None, "vs_baseline": None,
                "rule": "no_challenger", "version": None}  # fmt: skip
    spec = settings.dataset
    current = store.read_partition(settings.curated_dir, period)
    held_out = evaluate.holdout_mask(current[spec.id_column], settings.gate.holdout_fraction)
    y = current[spec.target][held_out]

    # Models are judged on the period's held-out rows, described as part of the whole period:
    # batch features (tracks per artist in the batch) count the period as it arrived, not a fifth
    # of it. The challenger scores only those rows; the champion's scores of the period are kept.
    challenger_version = client.get_model_version(settings.model_name, version)
    challenger = registry.load_trained(client, challenger_version)
    challenger_pred = np.asarray(model_lib.predict_rows(challenger, current, held_out), dtype=float)
    champion = client.get_model_version(settings.model_name, champion_version) if champion_version else None
    champion_pred = _champion_predictions(client, settings, period, champion, current)[held_out] if champion else None
    baseline_level = evaluate.baseline_level(settings.curated_dir, period, current, spec.target, held_out)

    gate = evaluate.passes_gate(y, challenger_pred, champion_pred, np.full(len(y), baseline_level), settings.gate)
    evidence = gate_evidence(gate)
    for key, value in (
        (registry.T_HOLDOUT_RMSE, f"{gate.challenger_rmse:.4f}"),
        ("flywheel.gate.champion_rmse", "" if gate.champion_rmse is None else f"{gate.champion_rmse:.4f}"),
        ("flywheel.gate.champion_version", champion_version or ""),
        ("flywheel.gate.baseline_rmse", f"{gate.baseline_rmse:.4f}"),
        ("flywheel.gate.passed", str(gate.passed)),
        ("flywheel.gate.holdout_rows", str(gate.holdout_rows)),
        ("flywheel.gate.rule", gate.rule),
        *((f"flywheel.gate.{k}", f"{v:.4f}") for k, v in evidence.items() if k != "holdout_rows"),
    ):
        client.set_model_version_tag(settings.model_name, version, key, value)
    report.record(
        client,
        run_id,
        metrics={
            "challenger_rmse": gate.challenger_rmse,
            "champion_holdout_rmse": gate.champion_rmse,
            "baseline_rmse": gate.baseline_rmse,
            **evidence,
        },
        tags={
            report.T_GATE: "passed" if gate.passed else "rejected",
            report.T_GATE_REASON: gate.reason[:500],
            report.T_GATE_RULE: gate.rule,
        },
    )
    logger.info("gate for v%s on %s: %s", version, period, gate.reason)
    return {**dataclasses.asdict(gate), "version": version}


def gate_evidence(gate: evaluate.GateResult) -> dict[str, float]:
    """The gate's evidence as flat numbers: held-out n and each paired difference with its bounds
    (``vs_champion``, ``vs_baseline``: challenger RMSE minus the other's; < 0 = challenger better).
    These names are the MLflow metrics of the period run and the ``flywheel.gate.*`` version tags."""
    evidence: dict[str, float] = {"holdout_rows": float(gate.holdout_rows)}
    for name, interval in (("vs_champion", gate.vs_champion), ("vs_baseline", gate.vs_baseline)):
        if interval is not None:
            evidence |= {name: interval.difference, f"{name}_low": interval.low, f"{name}_high": interval.high}
    return evidence


def _gate_metrics(gate: dict[str, Any] | None) -> dict[str, float | None]:
    if not gate:
        return {}
    keys = ("challenger_rmse", "champion_rmse", "baseline_rmse", "holdout_rows")
    metrics = {k: gate.get(k) for k in keys}
    for name in ("vs_champion", "vs_baseline"):  # the paired differences and their upper bounds
        if gate.get(name):
            metrics |= {name: gate[name]["difference"], f"{name}_high": gate[name]["high"]}
    return metrics


def promote_champion(
    settings: Settings,
    run_id: str,
    version: str,
    *,
    period: int | None = None,
    gated_against: str | None = None,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Promote ``version`` through the door: under the lock, if the champion is still ``gated_against``.

    If another promotion moved the champion since the gate (two runs racing), the challenger is
    gated again against the new champion on the same held-out rows and promoted only if it beats
    it too, so whichever order the racers take the lock in, the better model ends as champion.
    A challenger that loses that second gate is rejected with the reason.
    """
    from driftwheel import registry, report

    client = _client(settings)
    for _ in range(_MAX_REGATES + 1):
        promotion = registry.promote(
            client,
            settings.model_name,
            version,
            gated_against=gated_against,
            door=_door(settings),
            period=period,
            run_id=run_id,
            metrics=_gate_metrics(gate),
        )
        if promotion.promoted or promotion.moved_to is None or period is None:
            break
        gated_against = promotion.moved_to
        gate = _gate(client, settings, period, run_id, version, gated_against)
        if not gate["passed"]:
            reason = f"gated again against v{gated_against}, which was promoted meanwhile: {gate['reason']}"
            _reject(client, settings, run_id, version, reason, period=period, champion_version=gated_against, gate=gate)
            promotion = dataclasses.replace(promotion, reason=reason)
            break
    report.record(client, run_id, tags={report.T_PROMOTED: promotion.promoted, "flywheel.promotion": promotion.reason})
    return dataclasses.asdict(promotion)


# Promotions racing for one model: how often a challenger is gated again before it gives up.
_MAX_REGATES = 3


def reject_challenger(
    settings: Settings,
    run_id: str,
    version: str | None,
    reason: str,
    *,
    period: int | None = None,
    champion_version: str | None = None,
    gate: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Mark the challenger rejected (with the reason) and append the rejection to the ledger."""
    client = _client(settings)
    _reject(client, settings, run_id, version, reason, period=period, champion_version=champion_version, gate=gate)
    return {"version": version, "rejected": True}


def _reject(
    client: MlflowClient,
    settings: Settings,
    run_id: str,
    version: str | None,
    reason: str,
    *,
    period: int | None,
    champion_version: str | None,
    gate: dict[str, Any] | None,
) -> None:
    from driftwheel import registry, report

    registry.reject(
        client,
        settings.model_name,
        version,
        reason,
        door=_door(settings),
        period=period,
        run_id=run_id,
        champion_version=champion_version,
        metrics=_gate_metrics(gate),
    )
    report.record(client, run_id, tags={report.T_PROMOTED: False})


def rollback_champion(settings: Settings, reason: str, to_version: str | None = None) -> dict[str, Any]:
    """Restore an earlier champion (default: the one the current champion replaced) through the door."""
    from driftwheel import registry

    restored = registry.rollback(
        _client(settings), settings.model_name, reason=reason, door=_door(settings), to_version=to_version
    )
    return dataclasses.asdict(restored)


def history(settings: Settings) -> list[Any]:
    """The ledger of the model's champion: every promotion, refusal, rejection and rollback, oldest first."""
    return _history(_client(settings), settings)


def _history(client: MlflowClient, settings: Settings) -> list[Any]:
    from driftwheel import ledger

    return ledger.entries(client, ledger.experiment_name(settings.experiment_name), settings.model_name)


def fail_period(settings: Settings, period: int, reason: str) -> None:
    """End the period's MLflow run as FAILED (a failed task), with the reason.

    Only an attempt that started fails the period's run: one that landed its data (the period is
    marked in progress) or opened the run. A refusal before that (a period out of order, undeclared
    Params, an unreadable landing file) leaves an earlier, finished run of the period as it was.
    """
    from driftwheel import report

    client = _client(settings)
    experiment = client.get_experiment_by_name(settings.experiment_name)
    if experiment is None:
        return
    run_id = report.find_period_run(client, experiment.experiment_id, period)
    started = store.in_progress(settings.curated_dir, period) is not None
    if run_id is not None and (started or client.get_run(run_id).info.status == "RUNNING"):
        report.record(client, run_id, tags={"flywheel.failure": reason[:500]})
        client.set_terminated(run_id, "FAILED")


def finish_period(settings: Settings, period: int, run_id: str, airflow_run_id: str | None = None) -> dict[str, Any]:
    """Record the period's outcome (champion after the period) and close its MLflow run."""
    from driftwheel import registry, report

    client = _client(settings)
    champion = registry.champion(client, settings.model_name)
    # Whether the period ever promoted, from the append-only ledger: a rerun that keeps the
    # champion does not erase the promotion an earlier run of the period made.
    promoted = any(e.action == "promote" and e.period == period for e in _history(client, settings))
    report.record(
        client,
        run_id,
        tags={
            report.T_CHAMPION: str(champion.version) if champion else None,
            report.T_PROMOTED: promoted,
            "flywheel.airflow_run_id": airflow_run_id,
        },
    )
    client.set_terminated(run_id, "FINISHED")
    store.mark_finished(settings.curated_dir, period)
    row = next(r for r in report.period_table(client, _experiment(settings, client)) if r.year == period)
    logger.info("period %s done: %s", period, row)
    return dataclasses.asdict(row)
