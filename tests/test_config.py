import dataclasses
from pathlib import Path

import pytest

from driftwheel.config import (
    ColumnMapError,
    DataError,
    ForbiddenLandingDir,
    Schedule,
    Settings,
    SettingsError,
    StudyNetConfig,
    TrainingConfig,
    TrendResidualConfig,
    UndeclaredParams,
    load_column_map,
)


def test_from_env_reads_flywheel_variables(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "FLYWHEEL_STATE_DIR": str(tmp_path),
            "FLYWHEEL_SOURCE": "file",
            "FLYWHEEL_MLFLOW_TRACKING_URI": "postgresql://x@/mlflow",
            "FLYWHEEL_LANDING_DIR": str(tmp_path / "in"),
            "FLYWHEEL_EPOCHS": "5",
        }
    )
    assert settings.state_dir == tmp_path
    assert settings.landing_dir == tmp_path / "in"
    assert settings.tracking_uri == "postgresql://x@/mlflow"
    assert settings.training.study_net.epochs == 5  # FLYWHEEL_EPOCHS: the study net's, as before
    renamed = Settings.from_env(
        {"FLYWHEEL_EPOCHS": "5", "FLYWHEEL_STUDY_NET_EPOCHS": "6", "FLYWHEEL_TREND_RESIDUAL_EPOCHS": "7"}
    )
    assert (renamed.training.study_net.epochs, renamed.training.trend_residual.epochs) == (6, 7)


def test_a_typo_in_a_value_fails_at_once_naming_the_variable_and_the_allowed_values(tmp_path: Path) -> None:
    with pytest.raises(
        SettingsError, match=r"FLYWHEEL_SOURCE='typo': Input should be 'synthetic', 'file' or 'spotify'"
    ):
        Settings.from_env({"FLYWHEEL_STATE_DIR": str(tmp_path), "FLYWHEEL_SOURCE": "typo"})
    # Every wrong variable is named at once, so one correction round suffices.
    with pytest.raises(
        SettingsError,
        match=r"FLYWHEEL_MIN_HOLDOUT_ROWS='0': .*greater than or equal to 1.*"
        r"FLYWHEEL_EPOCHS\)='ten': .*valid integer",
    ):
        Settings.from_env({"FLYWHEEL_MIN_HOLDOUT_ROWS": "0", "FLYWHEEL_EPOCHS": "ten"})
    with pytest.raises(SettingsError, match="FLYWHEEL_LAST_YEAR='twenty'"):
        Schedule.from_env({"FLYWHEEL_LAST_YEAR": "twenty"})
    # Built in code, the same model refuses the same values (replace validates too).
    with pytest.raises(ValueError, match="Input should be 'synthetic', 'file' or 'spotify'"):
        dataclasses.replace(Settings(state_dir=tmp_path), source="typo")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unexpected keyword argument"):
        TrainingConfig(epochs=5)  # type: ignore[call-arg]


def test_a_variable_that_nearly_names_a_setting_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    Settings.from_env({"FLYWHEEL_EPOCS": "5", "FLYWHEEL_STACK_DIR": "/srv/stack"})
    assert [r.getMessage() for r in caplog.records] == [
        "FLYWHEEL_EPOCS is not a setting and is ignored; did you mean FLYWHEEL_EPOCHS?"
    ]


def test_the_dag_schedule_reads_its_year_bounds_here() -> None:
    assert Schedule.from_env({}) == Schedule(first_year=2008, last_year=None)
    assert Schedule.from_env({"FLYWHEEL_FIRST_YEAR": "2013", "FLYWHEEL_LAST_YEAR": "2016"}) == Schedule(2013, 2016)


def test_a_data_set_names_its_flywheel_in_the_ui() -> None:
    named = Schedule.from_env({"FLYWHEEL_DAG_DISPLAY_NAME": "Top songs", "FLYWHEEL_DAG_TAGS": "kaggle, top songs,"})
    assert (named.display_name, named.tags) == ("Top songs", ("kaggle", "top songs"))
    assert Schedule.from_env({}).display_name == "Spotify popularity flywheel"
    with pytest.raises(SettingsError, match="FLYWHEEL_DAG_TAGS"):
        Schedule.from_env({"FLYWHEEL_DAG_TAGS": "x" * 101})


def test_each_knob_is_in_the_fingerprint_of_exactly_the_trainings_it_changes() -> None:
    base = TrainingConfig()
    more_study_epochs = dataclasses.replace(base, study_net=StudyNetConfig(epochs=31, fine_tune_epochs=31))
    for from_parent in (False, True):
        # The study net's epochs do not touch the default model: an identical model is found again.
        assert more_study_epochs.fingerprint_inputs(
            "trend_residual", from_parent=from_parent
        ) == base.fingerprint_inputs("trend_residual", from_parent=from_parent)
    assert more_study_epochs.fingerprint_inputs("full", from_parent=False) != base.fingerprint_inputs(
        "full", from_parent=False
    )
    assert more_study_epochs.fingerprint_inputs("transfer", from_parent=True) != base.fingerprint_inputs(
        "transfer", from_parent=True
    )
    # The trend_residual epochs change a training from scratch, not a fine-tune (which has its own).
    more_epochs = dataclasses.replace(base, trend_residual=TrendResidualConfig(epochs=16))
    assert more_epochs.fingerprint_inputs("trend_residual", from_parent=False) != base.fingerprint_inputs(
        "trend_residual", from_parent=False
    )
    assert more_epochs.fingerprint_inputs("trend_residual", from_parent=True) == base.fingerprint_inputs(
        "trend_residual", from_parent=True
    )
    # A fine-tune of the study net's single-period cold start does not read freeze_layers; pooled it does.
    frozen = dataclasses.replace(base, study_net=StudyNetConfig(freeze_layers=2))
    assert frozen.fingerprint_inputs("full", from_parent=False) == base.fingerprint_inputs("full", from_parent=False)
    assert frozen.fingerprint_inputs("full", from_parent=False, pooled=True) != base.fingerprint_inputs(
        "full", from_parent=False, pooled=True
    )


def test_default_tracking_uri_is_a_file_in_the_state_dir(tmp_path: Path) -> None:
    settings = Settings.from_env({"FLYWHEEL_STATE_DIR": str(tmp_path)})
    assert settings.tracking_uri == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert settings.landing_dir == tmp_path / "landing" / "synthetic"


def test_params_override_and_none_keeps_default(tmp_path: Path) -> None:
    settings = Settings(state_dir=tmp_path).with_params(
        {"strategy": "full", "force_retrain": True, "max_drift_share": None, "min_improvement": 0.05}
    )
    assert settings.training.strategy == "full"
    assert settings.force_retrain is True
    assert settings.drift.max_drift_share == Settings(state_dir=tmp_path).drift.max_drift_share
    assert settings.gate.min_improvement == 0.05


def test_column_map_file(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text(
        '{"columns": {"track_popularity": "popularity"}, "date_column": "release_date", "features": ["energy"]}'
    )
    settings = Settings(state_dir=tmp_path).with_file_source(**load_column_map(path))
    assert settings.file_source.column_map == {"track_popularity": "popularity"}
    assert settings.file_source.date_column == "release_date"
    assert settings.dataset.features == ("energy",)


def test_undeclared_params_are_refused_never_applied(tmp_path: Path) -> None:
    # The finding: a form user set max_bad_share 1.0 and 1,000 rows with popularity 500 were curated.
    base = Settings(state_dir=tmp_path)
    with pytest.raises(UndeclaredParams, match="'epochs', 'max_bad_share'"):
        base.with_params({"max_bad_share": 1.0, "epochs": 1, "strategy": "full"})


def test_landing_dir_param_only_inside_the_landing_roots(tmp_path: Path) -> None:
    inside = tmp_path / "landing" / "mine"
    inside.mkdir(parents=True)
    base = Settings(state_dir=tmp_path)  # default root: <state>/landing
    assert base.with_params({"landing_dir": str(inside)}).file_source.landing_dir == inside.resolve()
    for outside in ("/etc", str(tmp_path / "landing" / ".." / "elsewhere")):
        with pytest.raises(ForbiddenLandingDir, match="outside the allowed landing roots"):
            base.with_params({"landing_dir": outside})
    roots = Settings.from_env({"FLYWHEEL_STATE_DIR": str(tmp_path), "FLYWHEEL_LANDING_ROOTS": "/srv/a:/srv/b"})
    assert roots.allowed_landing_roots == (Path("/srv/a"), Path("/srv/b"))
    assert roots.with_params({"landing_dir": "/srv/b/2020"}).file_source.landing_dir == Path("/srv/b/2020")


def test_promotion_lock_follows_the_registry(tmp_path: Path) -> None:
    assert Settings(state_dir=tmp_path).promotion_lock_uri == (tmp_path / "locks").as_uri()
    pg = "postgresql+psycopg2://postgres@127.0.0.1:5432/mlflow"
    assert Settings(state_dir=tmp_path, mlflow_tracking_uri=pg).promotion_lock_uri == pg
    env = {"FLYWHEEL_STATE_DIR": str(tmp_path), "FLYWHEEL_LOCK_URI": pg, "FLYWHEEL_MIN_HOLDOUT_ROWS": "80"}
    settings = Settings.from_env(env)
    assert settings.promotion_lock_uri == pg and settings.gate.min_holdout_rows == 80


def test_column_map_encoding_delimiter_and_decimal(tmp_path: Path) -> None:
    path = tmp_path / "map.json"
    path.write_text('{"encoding": "latin-1", "delimiter": ";", "decimal": ","}')
    settings = Settings(state_dir=tmp_path).with_file_source(**load_column_map(path))
    assert (settings.file_source.encoding, settings.file_source.delimiter, settings.file_source.decimal) == (
        "latin-1",
        ";",
        ",",
    )
    assert settings.file_source.column_map_file == path


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ('{"features": "danceability"}', r"map.json: key 'features': Input should be a valid list"),
        ('{"columns": [["a", "b"]]}', r"map.json: key 'columns': Input should be a valid dictionary"),
        ('{"columns": {"a": 1}}', r"map.json: key 'columns.a': Input should be a valid string"),
        ('{"colums": {"a": "b"}}', r"map.json: key 'colums': Extra inputs are not permitted"),
        ('{"features": ["energy", "popularity"]}', r"map.json: key 'features' lists the label 'popularity'"),
        ('{"encoding": "latin-7x"}', r"map.json: key 'encoding': .*unknown encoding 'latin-7x'"),
        ('{"delimiter": ";;"}', r"map.json: key 'delimiter': String should have at most 1 character"),
        ('{\n  "columns": {"a": "b",}\n}', r"map.json line 2 column 24: not valid JSON"),
        ('["energy"]', r"map.json: expected a JSON object"),
    ],
)
def test_a_bad_column_map_names_the_file_and_the_key(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "map.json"
    path.write_text(text)
    with pytest.raises(ColumnMapError, match=message):
        load_column_map(path)
    with pytest.raises(DataError, match=message):  # the DAG fails a wrong column map without retry
        Settings.from_env({"FLYWHEEL_STATE_DIR": str(tmp_path), "FLYWHEEL_COLUMN_MAP": str(path)})
