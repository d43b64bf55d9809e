from driftwheel.config import DriftPolicy
from driftwheel.decide import DriftSummary, should_retrain


def _summary(**changes: object) -> DriftSummary:
    base = dict(
        period=2016,
        rows=2000,
        drift_share=0.1,
        drifted_columns=1,
        target_drift_score=0.02,
        target_drifted=False,
        production_rmse=6.0,
        champion_version="3",
        champion_holdout_rmse=5.9,
    )
    return DriftSummary(**{**base, **changes})  # type: ignore[arg-type]


def test_stable_period_is_skipped_with_reason() -> None:
    decision = should_retrain(_summary(), DriftPolicy(), warmup_end=2014)
    assert decision.action == "skip" and "stable" in decision.reason


def test_each_rule_triggers_a_retrain() -> None:
    policy = DriftPolicy(max_drift_share=0.5, max_rmse_increase=0.1)
    assert should_retrain(_summary(drift_share=0.6), policy, warmup_end=2014).retrain
    assert should_retrain(_summary(target_drifted=True, target_drift_score=0.3), policy, warmup_end=2014).retrain
    rmse = should_retrain(_summary(production_rmse=6.6), policy, warmup_end=2014)
    assert rmse.retrain and "production RMSE 6.60 > 6.49" in rmse.reason
    assert not should_retrain(_summary(production_rmse=6.4), policy, warmup_end=2014).retrain


def test_target_drift_rule_can_be_switched_off() -> None:
    policy = DriftPolicy(retrain_on_target_drift=False)
    assert not should_retrain(_summary(target_drifted=True), policy, warmup_end=2014).retrain


def test_warm_up_then_cold_start_then_force() -> None:
    no_model = dict(champion_version=None, production_rmse=None, champion_holdout_rmse=None)
    assert should_retrain(_summary(period=2012, **no_model), DriftPolicy(), warmup_end=2014).action == "skip"
    cold = should_retrain(_summary(period=2014, **no_model), DriftPolicy(), warmup_end=2014)
    assert cold.retrain and "cold start" in cold.reason
    assert should_retrain(_summary(), DriftPolicy(), warmup_end=2014, force=True).retrain


def test_absolute_rmse_limit_is_the_studys_rule() -> None:
    study = DriftPolicy(
        max_drift_share=1.01, retrain_on_target_drift=False, max_rmse_increase=1e9, max_production_rmse=3.5
    )
    decision = should_retrain(_summary(production_rmse=3.6), study, warmup_end=2014)
    assert decision.retrain and "production RMSE 3.60 > 3.50" in decision.reason
    assert not should_retrain(_summary(production_rmse=3.4), study, warmup_end=2014).retrain


def test_a_batch_below_the_minimum_is_never_trained_on() -> None:
    tiny = DriftSummary(2015, 5, 0.9, 12, 0.9, True, 9.0, "3", 5.0)
    decision = should_retrain(tiny, DriftPolicy(), warmup_end=2014, force=True, min_rows=100)
    assert decision.action == "skip" and "only 5 rows in 2015 (minimum 100)" in decision.reason
    cold = DriftSummary(2014, 5, None, None, None, None, None, None, None)
    assert should_retrain(cold, DriftPolicy(), warmup_end=2014, min_rows=100).action == "skip"
    assert should_retrain(cold, DriftPolicy(), warmup_end=2014, min_rows=5).action == "retrain"


def test_the_decision_names_the_rule_that_fired() -> None:
    policy = DriftPolicy(max_drift_share=0.5, max_rmse_increase=0.1)
    assert should_retrain(_summary(), policy, warmup_end=2014).rule == "stable"
    both = should_retrain(_summary(drift_share=0.6, production_rmse=6.6), policy, warmup_end=2014)
    assert both.rule == "feature_drift+rmse_increase"
    assert should_retrain(_summary(target_drifted=True), policy, warmup_end=2014).rule == "target_drift"
    assert should_retrain(_summary(), policy, warmup_end=2014, force=True).rule == "forced"
    no_model = dict(champion_version=None, production_rmse=None, champion_holdout_rmse=None)
    assert should_retrain(_summary(period=2012, **no_model), policy, warmup_end=2014).rule == "warmup"
    assert should_retrain(_summary(period=2014, **no_model), policy, warmup_end=2014).rule == "cold_start"


def test_the_schedule_retrains_a_champion_that_is_old_enough() -> None:
    # The default retrains every period (max_model_age=1): drift tests miss slow drift.
    every = should_retrain(_summary(champion_trained_through=2015), DriftPolicy(), warmup_end=2014)
    assert every.retrain and every.rule == "schedule" and "learnt up to 2015, 1 period(s) old" in every.reason
    biennial = DriftPolicy(max_model_age=2)
    assert not should_retrain(_summary(champion_trained_through=2015), biennial, warmup_end=2014).retrain
    assert should_retrain(_summary(champion_trained_through=2014), biennial, warmup_end=2014).rule == "schedule"
    off = DriftPolicy(max_model_age=None)
    assert not should_retrain(_summary(champion_trained_through=2010), off, warmup_end=2014).retrain
