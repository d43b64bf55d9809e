"""One frozen, typed, validated configuration object for the whole flywheel.

:class:`Settings` is a tree of frozen pydantic dataclasses: every value is checked when an object
is built, by ``dataclasses.replace`` too, so ``source="typo"`` or ``epochs="many"`` fails at once.
The environment is read here and nowhere else in the library: :data:`ENVIRONMENT` maps each
``FLYWHEEL_*`` variable to the field it sets, :meth:`Settings.from_env` validates them together
and names the variable (and the allowed values) in any error, and a run's Params are merged with
:meth:`Settings.with_params`. The DAG files read their year bounds with :meth:`Schedule.from_env`.
Credentials are no settings (settings are logged and pickled): the Spotify source's
``SpotifyCredentials.from_env`` reads its own.

Each knob exists once, in the section of the model family it applies to: ``training.study_net``
(the study's 32-32-32-50-1 network: ``transfer`` and ``full``) or ``training.trend_residual`` (the
default model); :meth:`TrainingConfig.fingerprint_inputs` lists the knobs a given training reads.
"""

from __future__ import annotations

import codecs
import dataclasses
import difflib
import json
import logging
import os
from collections.abc import Mapping
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import dataclass

REPO_ROOT = Path(__file__).resolve().parents[2]
logger = logging.getLogger(__name__)

# Unknown keyword arguments are errors, not silently dropped (pydantic's default for dataclasses).
# Validators are built on first use: the DAG files import this module at parse time.
_STRICT_FIELDS = ConfigDict(extra="forbid", defer_build=True)

PositiveInt = Annotated[int, Field(ge=1)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Share = Annotated[float, Field(ge=0.0, le=1.0)]
NonNegativeFloat = Annotated[float, Field(ge=0.0)]
PositiveFloat = Annotated[float, Field(gt=0.0)]

# The 13 audio features of the Spotify Web API, in the order the study used them.
SPOTIFY_AUDIO_FEATURES: tuple[str, ...] = (
    "danceability",
    "energy",
    "key",
    "loudness",
    "mode",
    "speechiness",
    "acousticness",
    "instrumentalness",
    "liveness",
    "valence",
    "tempo",
    "duration_ms",
    "time_signature",
)

# The seed data's schema (../shared/data/spotify_seed), which the synthetic and Spotify sources write.
SEED_COLUMNS: tuple[str, ...] = (
    "year",
    "track_id",
    "artist_name",
    "song_name",
    "album_name",
    *SPOTIFY_AUDIO_FEATURES,
    "popularity",
)
SEED_INT_COLUMNS: tuple[str, ...] = ("year", "key", "mode", "duration_ms", "time_signature", "popularity")
SEED_TEXT_COLUMNS: tuple[str, ...] = ("track_id", "artist_name", "song_name", "album_name")

# trend_residual: the label level follows a trend of past yearly means, a small ensemble learns the
# residual from audio, label-history and batch features, and each retrain fine-tunes it with
# replay (see driftwheel.model). transfer and full: the study's 32-32-32-50-1 network.
Strategy = Literal["trend_residual", "transfer", "full"]
SourceName = Literal["synthetic", "file", "spotify"]


class DataError(ValueError):
    """The data or its configuration is wrong: deterministic, so retrying cannot help.

    The message names what to fix (a file, a line, a column-map key, a variable). The DAG fails
    such a task without retries; any other exception is treated as possibly transient.
    """


class ColumnMapError(DataError):
    """The column-map file is not valid; the message names the file and the key."""


class SettingsError(DataError):
    """An environment variable has a value its setting does not allow; the message names both."""


@dataclass(frozen=True, config=_STRICT_FIELDS)
class DatasetSpec:
    """Which columns mean what. Columns are configuration, so other tabular data sets work too."""

    features: tuple[str, ...] = SPOTIFY_AUDIO_FEATURES
    # Features a data set may lack: they are dropped from the model instead of failing the run.
    optional_features: tuple[str, ...] = ("time_signature",)
    target: str = "popularity"
    id_column: str = "track_id"
    period_column: str = "year"
    # Carried through the curated store; the trend_residual model reads the three below when a
    # data set has them (artist history, title words, album facts) and leaves them out otherwise.
    extra_columns: tuple[str, ...] = ("artist_name", "song_name", "album_name")
    artist_column: str | None = "artist_name"
    title_column: str | None = "song_name"
    album_column: str | None = "album_name"
    # Plausible (min, max) of a feature, checked by validation: replaces the built-in range of a
    # Spotify feature, and gives one to any other feature (which otherwise only needs to be finite).
    ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    target_range: tuple[float, float] = (0.0, 100.0)


@dataclass(frozen=True, config=_STRICT_FIELDS)
class FileSourceConfig:
    """A landing folder of CSV or Parquet files and how their columns map onto the dataset spec."""

    landing_dir: Path | None = None  # None: <state>/landing/file
    pattern: Annotated[str, Field(min_length=1)] = "*"
    # Source column -> spec column, e.g. {"track_popularity": "popularity"}.
    column_map: Mapping[str, str] = field(default_factory=dict)
    # A column holding a release date (any pandas-parsable format) from which the year is taken
    # when the files have no period column of their own.
    date_column: str | None = None
    # How CSV files are read (Parquet files carry their own encoding and have no delimiter).
    encoding: str = "utf-8"
    delimiter: Annotated[str, Field(min_length=1, max_length=1)] = ","
    # "," for the decimal commas of semicolon-delimited European exports
    decimal: Annotated[str, Field(min_length=1, max_length=1)] = "."
    # Column (as named after the renames) -> (factor, offset): its values become value * factor +
    # offset when read, e.g. (0.01, 0.0) for a 0-100 feature the model expects on 0-1.
    scale: Mapping[str, tuple[float, float]] = field(default_factory=dict)
    # For files without an id column: the columns whose values, hashed, make each row's id.
    id_from: tuple[str, ...] = ()
    # The column-map file this configuration came from, so errors can name it; None: built in code.
    column_map_file: Path | None = None


@dataclass(frozen=True, config=_STRICT_FIELDS)
class SpotifyConfig:
    """What the Spotify source fetches, and from where. Credentials are no configuration: the DAG
    reads the ``spotify_default`` connection, else ``SPOTIPY_CLIENT_ID``/``SPOTIPY_CLIENT_SECRET``."""

    max_tracks: PositiveInt = 1000  # the search endpoint serves no offset beyond 1000
    api_base: str | None = None  # None: https://api.spotify.com/v1/
    auth_url: str | None = None  # None: https://accounts.spotify.com/api/token


# The names of driftwheel.scenarios.PRESETS, in its order (a test keeps them equal): the DAG's
# scenario Param offers them without building the scenario models on every parse of the DAG file.
SCENARIO_PRESETS: tuple[str, ...] = (
    "spotify_like",
    "stable",
    *(
        f"{kind}_{shape}"
        for kind in ("covariate", "label", "concept", "new_artists")
        for shape in ("sudden", "gradual", "incremental", "recurring", "blip")
        if (kind, shape) != ("new_artists", "incremental")
    ),
)


@dataclass(frozen=True, config=_STRICT_FIELDS)
class SyntheticConfig:
    rows_per_year: PositiveInt = 2000
    seed: int = 7
    # A preset of driftwheel.scenarios (spotify_like: the built-in Spotify-shaped schedule) or the
    # path of a scenario JSON file.
    scenario: str = "spotify_like"

    @field_validator("scenario")
    @classmethod
    def _known_scenario(cls, value: str) -> str:
        from driftwheel.scenarios import load_scenario  # pydantic models only; no generator

        load_scenario(value)  # a ScenarioError (a ValueError) names the presets or the bad key
        return value


@dataclass(frozen=True, config=_STRICT_FIELDS)
class ValidationPolicy:
    # A batch with more than this share of bad rows is rejected whole.
    max_bad_share: Share = 0.05


@dataclass(frozen=True, config=_STRICT_FIELDS)
class DriftPolicy:
    """When a new period warrants a retrain."""

    # Share of drifted feature columns (Evidently's DataDriftPreset) that triggers a retrain.
    max_drift_share: NonNegativeFloat = 0.5
    retrain_on_target_drift: bool = True
    # Retrain when the champion's production RMSE exceeds its own held-out RMSE by this fraction.
    max_rmse_increase: NonNegativeFloat = 0.10
    # Retrain when the champion's production RMSE exceeds this absolute value (None: no such rule;
    # the study retrained whenever RMSE > 3.5).
    max_production_rmse: NonNegativeFloat | None = None
    # Schedule: retrain when the champion's newest training period is this many periods old (1:
    # every period; None: only the rules above). Drift tests miss slow drift on small batches
    # (benchmarks/prequential.py: skipped years cost more than the fine-tunes), and the gate
    # keeps a scheduled challenger out unless it is better by more than noise.
    max_model_age: PositiveInt | None = 1
    # Drift is measured against the last N labelled periods before the new one: a fixed window, so
    # drift scores mean the same in every period whatever the champion was trained on.
    reference_window: PositiveInt = 3
    # Evidently stattests, fixed per column type at every sample size (Evidently's default switches
    # from p-values to distances at 1,000 rows): distances, larger = more drift, drift at >= threshold.
    numeric_method: Literal["wasserstein", "jensenshannon", "psi", "hellinger"] = "wasserstein"
    categorical_method: Literal["jensenshannon", "psi", "hellinger"] = "jensenshannon"
    drift_threshold: PositiveFloat = 0.1
    # The drift report compares at most this many rows of the period and of the reference (each a
    # uniform sample, driftwheel.drift.sample_rows); the champion still scores every row. At this
    # size each column's test already detects shifts far below the threshold that flags a column
    # (docs/benchmark/scale.md); the seed data (~2,000 rows a year, 14,000 pooled) is never sampled.
    report_rows: PositiveInt = 50_000
    # A folder of drift reports to reuse: a report whose inputs (rows, columns, tests, title) are
    # the same as a stored one's is copied instead of computed (None: every report is computed).
    # The drift lab sets it: every policy of a scenario replays the same data, so the same reports.
    report_cache_dir: Path | None = None


@dataclass(frozen=True, config=_STRICT_FIELDS)
class LivePolicy:
    """Live mode: when the labeled rows that arrived since the last retrain are worth considering one."""

    min_new_rows: PositiveInt = 500  # per period (release year), across the new files


@dataclass(frozen=True, config=_STRICT_FIELDS)
class GatePolicy:
    """When a challenger replaces the champion."""

    # The challenger's RMSE must be at least this fraction below the champion's.
    min_improvement: Share = 0.01
    holdout_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.2
    # False: every challenger is promoted, as in the study (the benchmark replays it that way).
    enabled: bool = True
    # Minimum evidence. An RMSE on n rows is known to about ±1/sqrt(2n) of itself (normal errors):
    # ±10 % at 50 rows, so fewer held-out rows cannot rank two models at all and the gate refuses.
    min_holdout_rows: PositiveInt = 50
    # A period with fewer curated rows is not trained on (its held-out split would be ~20 % of it).
    min_batch_rows: PositiveInt = 100
    # Uncertainty: a paired bootstrap of the held-out squared errors (evaluate.paired_difference).
    # A challenger passes only if the one-sided upper bound, at this confidence, of its RMSE minus
    # the champion's (and minus the baseline's) is below zero: better by more than noise. One that
    # is surely better than a champion the baseline beats passes without beating the baseline
    # (evaluate.passes_gate, rule stale_champion).
    confidence: Annotated[float, Field(ge=0.5, lt=1.0)] = 0.9
    bootstrap_resamples: PositiveInt = 1000
    bootstrap_seed: NonNegativeInt = 0


@dataclass(frozen=True, config=_STRICT_FIELDS)
class FeatureConfig:
    """The trend_residual model's label-history features (:mod:`driftwheel.features`)."""

    # Pseudo-count pulling an artist's mean residual towards 0: two past tracks are weak evidence.
    shrinkage: NonNegativeFloat = 3.0
    # Weight of a track ``k`` periods older than the newest past period, in the decayed mean.
    decay: Annotated[float, Field(gt=0.0, le=1.0)] = 0.75
    # Yearly means in the linear trend of the label level.
    trend_window: PositiveInt = 4
    # Two consecutive yearly means this many residual standard deviations apart are a step, not a
    # slope: the trend restarts after it (features.trend_level). 0: never. The seed data's means
    # move by at most 0.47 sd a year (2017); the drift lab's label presets step by about 1.3.
    step_sds: NonNegativeFloat = 1.0


@dataclass(frozen=True, config=_STRICT_FIELDS)
class TrendResidualConfig:
    """The default model: trend level + residual ensemble. Values measured on the seed data
    (benchmarks/prequential.py, docs/benchmark/; the research prototype is in git history)."""

    # From scratch: the networks' shape and training. A fine-tune keeps its parent's shape.
    ensemble_size: PositiveInt = 3
    hidden: tuple[PositiveInt, ...] = (64, 32)
    dropout: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.3
    epochs: NonNegativeInt = 15
    learning_rate: PositiveFloat = 1e-3
    # Both from scratch and fine-tuning.
    batch_size: PositiveInt = 64
    weight_decay: NonNegativeFloat = 1e-4
    # False: every retrain trains from scratch on all labelled periods (the cost reference).
    fine_tune: bool = True
    fine_tune_epochs: NonNegativeInt = 4
    fine_tune_learning_rate: PositiveFloat = 5e-4
    # Replayed earlier rows in a fine-tune, as a share of the new rows: guards against forgetting.
    replay_share: NonNegativeFloat = 0.5
    # Earlier rows kept in the model artifact to replay from (a uniform sample of all seen rows).
    replay_buffer_rows: NonNegativeInt = 4000
    # A training (from scratch or fine-tune) fits at most this many rows: beyond, a uniform sample
    # (the rows with the smallest content hash, as the replay buffer). The label history, the
    # level and the batch features still use every row. Trainings on the seed data fit <= 14,000
    # rows, so the cap never bites there; at a million rows a period it bounds the epochs' cost.
    max_fit_rows: PositiveInt = 100_000
    # Label-history features and the trend: shrinkage pseudo-count, yearly decay, trend window.
    features: FeatureConfig = field(default_factory=FeatureConfig)


@dataclass(frozen=True, config=_STRICT_FIELDS)
class StudyNetConfig:
    """The study's network (strategies ``transfer`` and ``full``)."""

    epochs: NonNegativeInt = 30  # training from scratch
    # Transfer: the first ``freeze_layers`` layers stay fixed and the rest trains this many epochs.
    # A cold start on pooled warm-up periods adapts the same way to the newest period.
    freeze_layers: NonNegativeInt = 3
    fine_tune_epochs: NonNegativeInt = 30
    batch_size: PositiveInt = 32
    learning_rate: PositiveFloat = 1e-3
    # Share of the new period's size drawn from earlier periods and added to a transfer fine-tune.
    replay_share: NonNegativeFloat = 0.0


@dataclass(frozen=True, config=_STRICT_FIELDS)
class TrainingConfig:
    """Which model family trains, on which periods; each family's knobs in its own section."""

    strategy: Strategy = "trend_residual"
    # Seeds the networks' initialisation and minibatch order and every replay sample, of both families.
    seed: int = 0
    # Years before the first model are pooled, as the study did: train once at warmup_end.
    warmup_start: int = 2008
    warmup_end: int = 2014
    study_net: StudyNetConfig = field(default_factory=StudyNetConfig)
    trend_residual: TrendResidualConfig = field(default_factory=TrendResidualConfig)

    def fingerprint_inputs(self, strategy: str, *, from_parent: bool, pooled: bool = False) -> dict[str, Any]:
        """The knobs one training reads, and no other: two trainings that differ in none of them
        (and in no data, period or parent) train the same model, so a version is found again.

        ``strategy`` is the one that trains (a cold start of ``transfer`` trains ``full``);
        ``from_parent``: a fine-tune of the champion; ``pooled``: the study net's cold start on
        several warm-up periods (trained from scratch, then adapted to the newest period). What
        only decides *which rows* are trained on (``warmup_*``, ``fine_tune``, the study net's
        ``replay_share``) is left out: those rows are fingerprinted themselves.
        """
        if strategy == "trend_residual":
            cfg = self.trend_residual
            knobs: dict[str, Any] = {
                "seed": self.seed,
                "batch_size": cfg.batch_size,
                "weight_decay": cfg.weight_decay,
                "replay_buffer_rows": cfg.replay_buffer_rows,
                "max_fit_rows": cfg.max_fit_rows,
                "features": dataclasses.asdict(cfg.features),
            }
            if from_parent:
                knobs.update(
                    fine_tune_epochs=cfg.fine_tune_epochs,
                    fine_tune_learning_rate=cfg.fine_tune_learning_rate,
                    replay_share=cfg.replay_share,
                )
            else:
                knobs.update(
                    ensemble_size=cfg.ensemble_size,
                    hidden=list(cfg.hidden),
                    dropout=cfg.dropout,
                    epochs=cfg.epochs,
                    learning_rate=cfg.learning_rate,
                )
            return knobs
        net = self.study_net
        knobs = {"seed": self.seed, "batch_size": net.batch_size, "learning_rate": net.learning_rate}
        if strategy == "full":
            knobs["epochs"] = net.epochs
        if strategy == "transfer" or pooled:
            knobs.update(freeze_layers=net.freeze_layers, fine_tune_epochs=net.fine_tune_epochs)
        return knobs


@dataclass(frozen=True, config=_STRICT_FIELDS)
class Settings:
    state_dir: Path
    source: SourceName = "synthetic"
    mlflow_tracking_uri: str | None = None  # None: a SQLite file in the state directory
    experiment_name: str = "driftwheel"
    model_name: Annotated[str, Field(min_length=1)] = "spotify_popularity"
    dataset: DatasetSpec = field(default_factory=DatasetSpec)
    file_source: FileSourceConfig = field(default_factory=FileSourceConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    spotify: SpotifyConfig = field(default_factory=SpotifyConfig)
    validation: ValidationPolicy = field(default_factory=ValidationPolicy)
    drift: DriftPolicy = field(default_factory=DriftPolicy)
    gate: GatePolicy = field(default_factory=GatePolicy)
    live: LivePolicy = field(default_factory=LivePolicy)
    training: TrainingConfig = field(default_factory=TrainingConfig)
    force_retrain: bool = False
    # Where promotions take their lock: a PostgreSQL URI (an advisory lock, for stacks whose tasks
    # run on several machines) or None: a lock file in the state directory (one machine).
    lock_uri: str | None = None
    # Folders a run's ``landing_dir`` Param may point into; empty: only the configured landing folder.
    landing_roots: tuple[Path, ...] = ()

    # -- paths, all under the one state directory --------------------------------------------
    @property
    def landing_dir(self) -> Path:
        if self.source == "file":
            return self.file_source.landing_dir or self.state_dir / "landing" / "file"
        from driftwheel.scenarios import DEFAULT_SCENARIO

        if self.source == "synthetic" and self.synthetic.scenario != DEFAULT_SCENARIO:
            # One folder per scenario: a run with the ``scenario`` Param lands its years beside the
            # default's instead of being refused by (or overwriting) the folder's generator.
            return self.state_dir / "landing" / f"synthetic-{Path(self.synthetic.scenario).stem}"
        return self.state_dir / "landing" / self.source

    @property
    def curated_dir(self) -> Path:
        return self.state_dir / "curated"

    @property
    def quarantine_dir(self) -> Path:
        return self.state_dir / "quarantine"

    @property
    def reports_dir(self) -> Path:
        return self.state_dir / "reports"

    @property
    def tracking_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{self.state_dir / 'mlflow.db'}"

    @property
    def artifact_location(self) -> str:
        return (self.state_dir / "mlartifacts").as_uri()

    @property
    def promotion_lock_uri(self) -> str:
        """A PostgreSQL URI for an advisory lock, else a ``file://`` lock in the state directory.

        By default the lock lives where the registry does when that is PostgreSQL (the embedded
        default's tasks write to MLflow's database directly), so every writer of the registry sees it.
        """
        if self.lock_uri:
            return self.lock_uri
        if self.tracking_uri.startswith("postgresql"):
            return self.tracking_uri
        return (self.state_dir / "locks").as_uri()

    @property
    def allowed_landing_roots(self) -> tuple[Path, ...]:
        if self.landing_roots:
            return self.landing_roots
        return (self.file_source.landing_dir or self.state_dir / "landing",)

    # -- construction ---------------------------------------------------------------------------
    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Settings from the ``FLYWHEEL_*`` variables of :data:`ENVIRONMENT` (default: ``os.environ``);
        anything unset or empty keeps its default.

        Raises :class:`SettingsError` naming every variable whose value is not allowed (and what
        is), and :class:`ColumnMapError` for a bad ``FLYWHEEL_COLUMN_MAP`` file.
        """
        env = os.environ if env is None else env
        _warn_of_near_misses(env)
        tree = _tree(ENVIRONMENT, env)
        tree.setdefault("state_dir", str(REPO_ROOT / "state"))
        column_map = tree.get("file_source", {}).pop("column_map_file", None)
        if column_map:
            parsed = load_column_map(Path(column_map))
            tree["dataset"] = {k: parsed.pop(k) for k in _DATASET_FIELDS if k in parsed}
            tree["file_source"] |= parsed
        return _validated(cls, tree, ENVIRONMENT)

    def with_file_source(self, **changes: Any) -> Settings:
        """These settings with the file source's fields changed; ``features``, ``optional_features``,
        ``ranges`` and ``target_range`` (of a column map, see :func:`load_column_map`) change the
        dataset spec."""
        spec_changes = {k: changes.pop(k) for k in _DATASET_FIELDS if k in changes}
        return dataclasses.replace(
            self,
            file_source=dataclasses.replace(self.file_source, **changes),
            dataset=dataclasses.replace(self.dataset, **spec_changes),
        )

    def with_params(self, params: Mapping[str, Any]) -> Settings:
        """Merge a run's Params (the DAG's trigger form) into these settings.

        Only :data:`RUN_PARAMS` are accepted: any other key raises :class:`UndeclaredParams`, naming
        it, so nothing a form user adds is applied silently (the data-quality limits, for one, are
        not a form setting). ``None`` values change nothing, so a form left at its defaults changes
        nothing. A ``landing_dir`` must lie inside :attr:`allowed_landing_roots`.
        """
        undeclared = sorted(set(params) - RUN_PARAMS)
        if undeclared:
            raise UndeclaredParams(
                f"run parameters {', '.join(map(repr, undeclared))} are not declared by the DAG and are "
                f"not applied; declared: {', '.join(sorted(RUN_PARAMS))}"
            )
        p = {k: v for k, v in params.items() if v is not None}
        settings = self
        if "source" in p:
            settings = dataclasses.replace(settings, source=p["source"])
        if p.get("landing_dir"):
            settings = settings.with_file_source(landing_dir=self.checked_landing_dir(Path(p["landing_dir"])))
        if "scenario" in p:
            settings = dataclasses.replace(
                settings, synthetic=dataclasses.replace(settings.synthetic, scenario=p["scenario"])
            )
        if "force_retrain" in p:
            settings = dataclasses.replace(settings, force_retrain=bool(p["force_retrain"]))
        if "strategy" in p:
            settings = dataclasses.replace(
                settings, training=dataclasses.replace(settings.training, strategy=p["strategy"])
            )
        drift = {k: p[k] for k in ("max_drift_share", "max_rmse_increase") if k in p}
        if drift:
            settings = dataclasses.replace(settings, drift=dataclasses.replace(settings.drift, **drift))
        if "min_improvement" in p:
            settings = dataclasses.replace(
                settings,
                gate=dataclasses.replace(settings.gate, min_improvement=float(p["min_improvement"])),
            )
        if "min_new_rows" in p:
            settings = dataclasses.replace(settings, live=LivePolicy(min_new_rows=int(p["min_new_rows"])))
        return settings

    def checked_landing_dir(self, folder: Path) -> Path:
        """``folder`` resolved, if it lies inside an allowed landing root; else :class:`ForbiddenLandingDir`."""
        resolved = folder.resolve()
        roots = [r.resolve() for r in self.allowed_landing_roots]
        if not any(resolved == r or resolved.is_relative_to(r) for r in roots):
            raise ForbiddenLandingDir(
                f"landing_dir {folder} is outside the allowed landing roots ({', '.join(map(str, roots))}); "
                "set FLYWHEEL_LANDING_ROOTS on the workers to allow more folders"
            )
        return resolved


@dataclass(frozen=True, config=_STRICT_FIELDS)
class Schedule:
    """What the yearly DAG file reads when it is parsed: the years it schedules and the name and tags
    it shows. This section stays apart from :class:`Settings` (whose column map is a file read per task)."""

    first_year: Annotated[int, Field(ge=1900, le=2100)] = 2008
    # A replay over a closed range (the demo, the tests) sets it, so that unpausing the DAG does
    # not also schedule the current year; live use leaves it unset.
    last_year: Annotated[int, Field(ge=1900, le=2100)] | None = None
    # A data set names its flywheel in the UI; the dag_id stays spotify_flywheel so that existing
    # runs, backfills and links keep working.
    display_name: Annotated[str, Field(min_length=1, max_length=200)] = "Spotify popularity flywheel"
    tags: tuple[Annotated[str, Field(min_length=1, max_length=100)], ...] = ("flywheel", "mlflow", "evidently")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Schedule:
        """``FLYWHEEL_FIRST_YEAR``, ``FLYWHEEL_LAST_YEAR``, ``FLYWHEEL_DAG_DISPLAY_NAME`` and
        ``FLYWHEEL_DAG_TAGS`` (comma-separated); :class:`SettingsError` names a bad one."""
        tree = _tree(SCHEDULE_ENVIRONMENT, os.environ if env is None else env)
        if "tags" in tree:
            tree["tags"] = [tag.strip() for tag in tree["tags"].split(",") if tag.strip()]
        return _validated(cls, tree, SCHEDULE_ENVIRONMENT)


SCHEDULE_ENVIRONMENT: dict[str, str] = {
    "FLYWHEEL_FIRST_YEAR": "first_year",
    "FLYWHEEL_LAST_YEAR": "last_year",
    "FLYWHEEL_DAG_DISPLAY_NAME": "display_name",
    "FLYWHEEL_DAG_TAGS": "tags",
}


# Every variable the library reads, and the field it sets. The value is validated as that field's
# type; FLYWHEEL_LANDING_ROOTS is a list separated by os.pathsep (":"), FLYWHEEL_COLUMN_MAP a JSON
# file (see load_column_map).
ENVIRONMENT: dict[str, str] = {
    "FLYWHEEL_STATE_DIR": "state_dir",
    "FLYWHEEL_SOURCE": "source",
    "FLYWHEEL_MLFLOW_TRACKING_URI": "mlflow_tracking_uri",
    "FLYWHEEL_EXPERIMENT": "experiment_name",
    "FLYWHEEL_MODEL_NAME": "model_name",
    "FLYWHEEL_LOCK_URI": "lock_uri",
    "FLYWHEEL_LANDING_ROOTS": "landing_roots",
    "FLYWHEEL_LANDING_DIR": "file_source.landing_dir",
    "FLYWHEEL_COLUMN_MAP": "file_source.column_map_file",
    "FLYWHEEL_ROWS_PER_YEAR": "synthetic.rows_per_year",
    "FLYWHEEL_SCENARIO": "synthetic.scenario",
    "FLYWHEEL_SPOTIFY_MAX_TRACKS": "spotify.max_tracks",
    "FLYWHEEL_SPOTIFY_API_BASE": "spotify.api_base",
    "FLYWHEEL_SPOTIFY_AUTH_URL": "spotify.auth_url",
    "FLYWHEEL_MIN_HOLDOUT_ROWS": "gate.min_holdout_rows",
    "FLYWHEEL_MIN_BATCH_ROWS": "gate.min_batch_rows",
    "FLYWHEEL_GATE_CONFIDENCE": "gate.confidence",
    "FLYWHEEL_DRIFT_REFERENCE_WINDOW": "drift.reference_window",
    "FLYWHEEL_MAX_MODEL_AGE": "drift.max_model_age",
    "FLYWHEEL_DRIFT_THRESHOLD": "drift.drift_threshold",
    "FLYWHEEL_LIVE_MIN_NEW_ROWS": "live.min_new_rows",
    "FLYWHEEL_WARMUP_START": "training.warmup_start",
    "FLYWHEEL_WARMUP_END": "training.warmup_end",
    "FLYWHEEL_STUDY_NET_EPOCHS": "training.study_net.epochs",
    "FLYWHEEL_STUDY_NET_FINE_TUNE_EPOCHS": "training.study_net.fine_tune_epochs",
    "FLYWHEEL_TREND_RESIDUAL_EPOCHS": "training.trend_residual.epochs",
    "FLYWHEEL_TREND_RESIDUAL_FINE_TUNE_EPOCHS": "training.trend_residual.fine_tune_epochs",
}
# Earlier names, still read (they always set the study net's epochs); the new name wins.
RENAMED: dict[str, str] = {
    "FLYWHEEL_EPOCHS": "FLYWHEEL_STUDY_NET_EPOCHS",
    "FLYWHEEL_FINE_TUNE_EPOCHS": "FLYWHEEL_STUDY_NET_FINE_TUNE_EPOCHS",
}
_LISTS = {"landing_roots"}

_T = TypeVar("_T")


def _tree(variables: Mapping[str, str], env: Mapping[str, str]) -> dict[str, Any]:
    """The set variables' raw values, nested by field path: {"training": {"warmup_end": "2014"}}."""
    tree: dict[str, Any] = {}
    for variable, path in variables.items():
        old = next((o for o, n in RENAMED.items() if n == variable), None)
        value = env.get(variable) or (env.get(old) if old else None)
        if not value:
            continue
        *parents, name = path.split(".")
        node = tree
        for part in parents:
            node = node.setdefault(part, {})
        node[name] = [v for v in value.split(os.pathsep) if v] if name in _LISTS else value
    return tree


def _warn_of_near_misses(env: Mapping[str, str]) -> None:
    """Log a ``FLYWHEEL_*`` variable that is no setting but nearly the name of one (a typo is ignored
    otherwise). Other unknown names are left alone: the operations tooling has its own."""
    known = [*ENVIRONMENT, *RENAMED, *SCHEDULE_ENVIRONMENT]
    for name in env:
        if name.startswith("FLYWHEEL_") and name not in known:
            close = difflib.get_close_matches(name, known, n=1, cutoff=0.9)
            if close:
                logger.warning("%s is not a setting and is ignored; did you mean %s?", name, close[0])


def _validated(cls: type[_T], tree: dict[str, Any], variables: Mapping[str, str]) -> _T:
    """``cls`` built from ``tree``; a :class:`SettingsError` naming each variable that is wrong."""
    try:
        return TypeAdapter(cls).validate_python(tree)
    except ValidationError as err:
        by_path = {path: variable for variable, path in variables.items()}
        for old, new in RENAMED.items():
            if new in variables:
                by_path[variables[new]] += f" (or {old})"
        problems = []
        for e in err.errors():
            path = ".".join(str(part) for part in e["loc"] if not isinstance(part, int))
            variable = by_path.get(path, path)
            shown = f"{variable}={e['input']!r}" if variable != path else variable
            problems.append(f"{shown}: {e['msg']}")
        raise SettingsError("invalid settings: " + "; ".join(problems)) from None


# The Params a run may carry: those the DAGs declare (spotify_flywheel's form; min_new_rows is
# live_flywheel's). Anything else in a run's conf is refused, never applied.
RUN_PARAMS = frozenset(
    {
        "year",
        "source",
        "landing_dir",
        "scenario",
        "strategy",
        "force_retrain",
        "max_drift_share",
        "max_rmse_increase",
        "min_improvement",
        "min_new_rows",
    }
)


class UndeclaredParams(DataError):
    """A run carried parameters its DAG does not declare."""


class ForbiddenLandingDir(DataError):
    """A run's ``landing_dir`` points outside the allowed landing roots."""


def _ordered(bounds: list[float]) -> list[float]:
    if not bounds[0] < bounds[1]:
        raise ValueError(f"expected [min, max] with min < max, got {bounds}")
    return bounds


FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
# [min, max] of a range; checked where it stands, so an error names "range.<column>".
Pair = Annotated[list[FiniteFloat], Field(min_length=2, max_length=2)]
Bounds = Annotated[Pair, AfterValidator(_ordered)]


class ScaleRule(BaseModel):
    """How a column's values are rescaled when read: ``{"multiply": 1000}`` (seconds to ms) or
    ``{"from": [0, 100], "to": [0, 1]}`` (a linear map of one range onto another)."""

    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True, populate_by_name=True)

    multiply: FiniteFloat | None = None
    # Plain pairs: a map may reverse a scale ("from": [0, 10], "to": [10, 0]).
    from_: Pair | None = Field(default=None, alias="from")
    to: Pair | None = None

    @model_validator(mode="after")
    def _one_form(self) -> ScaleRule:
        if self.multiply is not None:
            if self.from_ is not None or self.to is not None:
                raise ValueError('give either "multiply" or "from" and "to", not both')
            if self.multiply == 0:
                raise ValueError('"multiply" must not be 0')
        elif self.from_ is None or self.to is None:
            raise ValueError('expected {"multiply": factor} or {"from": [a, b], "to": [c, d]}')
        elif self.from_[0] == self.from_[1]:
            raise ValueError(f'"from" must span a range, got {self.from_}')
        return self

    def factor_offset(self) -> tuple[float, float]:
        """(factor, offset) such that a value read becomes ``value * factor + offset``."""
        if self.multiply is not None:
            return float(self.multiply), 0.0
        assert self.from_ is not None and self.to is not None  # checked by _one_form
        (a, b), (c, d) = self.from_, self.to
        factor = (d - c) / (b - a)
        return factor, c - a * factor


class ColumnMapFile(BaseModel):
    """A column-map file (see :func:`load_column_map`); each key is optional."""

    # strict: "features": "danceability" must not pass as the list of its letters.
    model_config = ConfigDict(extra="forbid", strict=True, defer_build=True)

    columns: dict[str, str] | None = None
    date_column: str | None = None
    pattern: str | None = Field(default=None, min_length=1)
    encoding: str | None = None
    delimiter: str | None = Field(default=None, min_length=1, max_length=1)
    decimal: str | None = Field(default=None, min_length=1, max_length=1)
    features: list[str] | None = Field(default=None, min_length=1)
    optional_features: list[str] | None = None
    scale: dict[str, ScaleRule] | None = None
    range: dict[str, Bounds] | None = None
    id_from: list[Annotated[str, Field(min_length=1)]] | None = Field(default=None, min_length=1)
    label_range: Bounds | None = None

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                codecs.lookup(value)
            except LookupError:
                raise ValueError(f'unknown encoding {value!r} (e.g. "utf-8", "latin-1")') from None
        return value


# Column-map key -> the field it sets (of FileSourceConfig, or of DatasetSpec for _DATASET_FIELDS).
_COLUMN_MAP_KEYS = {
    "columns": "column_map",
    "date_column": "date_column",
    "pattern": "pattern",
    "encoding": "encoding",
    "delimiter": "delimiter",
    "decimal": "decimal",
    "features": "features",
    "optional_features": "optional_features",
    "scale": "scale",
    "range": "ranges",
    "id_from": "id_from",
    "label_range": "target_range",
}
# The fields a column map sets on the dataset spec rather than on the file source.
_DATASET_FIELDS = ("features", "optional_features", "ranges", "target_range")


def load_column_map(path: Path, target: str = DatasetSpec.target) -> dict[str, Any]:
    """Read and validate a column-map file for the file source; return keyword arguments for
    :meth:`Settings.with_file_source` (including ``column_map_file=path``).

    The file is JSON: ``{"columns": {"source name": "spec name", ...}, "date_column": "release_date",
    "features": [...], "optional_features": [...], "pattern": "*.csv", "encoding": "latin-1",
    "delimiter": ";", "decimal": ",", "scale": {"energy": {"from": [0, 100], "to": [0, 1]}},
    "range": {"energy": [0, 1]}, "id_from": ["artist_name", "song_name"], "label_range": [0, 100]}``;
    every key is optional (docs/column-map.md). Raises :class:`ColumnMapError` naming the file and
    the key (or the line, for malformed JSON) for unknown keys, values of the wrong type, an unknown
    encoding, a delimiter or decimal mark longer than one character, the label ``target`` among the
    features, a scale or range of a column that is no feature (the label may be scaled; its range
    is ``label_range``), a scale that is no linear map, or a range whose min is not below its max.
    Whether the renamed source columns exist is checked when the landing files are read.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ColumnMapError(
            f"column map {path} line {err.lineno} column {err.colno}: not valid JSON: {err.msg}"
        ) from err
    except OSError as err:
        raise ColumnMapError(f"column map {path} cannot be read: {err}") from err
    if not isinstance(raw, dict):
        raise ColumnMapError(f"column map {path}: expected a JSON object with keys {sorted(_COLUMN_MAP_KEYS)}")
    try:
        parsed = ColumnMapFile.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(f"key '{'.'.join(str(part) for part in e['loc'])}': {e['msg']}" for e in err.errors())
        raise ColumnMapError(f"column map {path}: {problems} (allowed keys: {', '.join(_COLUMN_MAP_KEYS)})") from err
    for key in ("features", "optional_features"):
        if target in (getattr(parsed, key) or ()):
            raise ColumnMapError(f"column map {path}: key '{key}' lists the label '{target}', which is no feature")
    # Scales and ranges name columns as the renames leave them; a typo would otherwise do nothing.
    features = parsed.features or list(DatasetSpec.features)
    known = f'(columns are named as "columns" renames them; features: {", ".join(features)})'
    for name in parsed.scale or {}:
        if name not in (*features, target):
            raise ColumnMapError(f"column map {path}: key 'scale.{name}': '{name}' is no feature nor the label {known}")
    for name in parsed.range or {}:
        if name not in features:
            raise ColumnMapError(
                f"column map {path}: key 'range.{name}': '{name}' is no feature {known}; the label's is 'label_range'"
            )
    out: dict[str, Any] = {"column_map_file": path}
    for key, name in _COLUMN_MAP_KEYS.items():
        value = getattr(parsed, key)
        if value is None:
            continue
        if key == "scale":
            value = {column: rule.factor_offset() for column, rule in value.items()}
        elif key == "range":
            value = {column: tuple(bounds) for column, bounds in value.items()}
        out[name] = tuple(value) if isinstance(value, list) else value
    return out
