"""One frozen, typed configuration object for the whole flywheel.

It is built at the edge (inside a DAG task, in the CLI, in a benchmark) from the environment with
:func:`Settings.from_env` and merged with a run's Params with :meth:`Settings.with_params`.
Nothing in the library reads the environment anywhere else.
"""

from __future__ import annotations

import codecs
import dataclasses
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

REPO_ROOT = Path(__file__).resolve().parents[2]

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

    The message names what to fix (a file, a line, a column-map key). The DAG fails such a task
    without retries; any other exception is treated as possibly transient.
    """


class ColumnMapError(DataError):
    """The column-map file is not valid; the message names the file and the key."""


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class FileSourceConfig:
    """A landing folder of CSV or Parquet files and how their columns map onto the dataset spec."""

    landing_dir: Path | None = None  # None: <state>/landing/file
    pattern: str = "*"
    # Source column -> spec column, e.g. {"track_popularity": "popularity"}.
    column_map: Mapping[str, str] = field(default_factory=dict)
    # A column holding a release date (any pandas-parsable format) from which the year is taken
    # when the files have no period column of their own.
    date_column: str | None = None
    # How CSV files are read (Parquet files carry their own encoding and have no delimiter).
    encoding: str = "utf-8"
    delimiter: str = ","
    decimal: str = "."  # "," for the decimal commas of semicolon-delimited European exports
    # The column-map file this configuration came from, so errors can name it; None: built in code.
    column_map_file: Path | None = None


@dataclass(frozen=True)
class SpotifyConfig:
    """What the Spotify source fetches, and from where. Credentials are no configuration: the DAG
    reads the ``spotify_default`` connection, else ``SPOTIPY_CLIENT_ID``/``SPOTIPY_CLIENT_SECRET``."""

    max_tracks: int = 1000  # the search endpoint serves no offset beyond 1000
    api_base: str | None = None  # None: https://api.spotify.com/v1/
    auth_url: str | None = None  # None: https://accounts.spotify.com/api/token


@dataclass(frozen=True)
class SyntheticConfig:
    rows_per_year: int = 2000
    seed: int = 7


@dataclass(frozen=True)
class ValidationPolicy:
    # A batch with more than this share of bad rows is rejected whole.
    max_bad_share: float = 0.05


@dataclass(frozen=True)
class DriftPolicy:
    """When a new period warrants a retrain."""

    # Share of drifted feature columns (Evidently's DataDriftPreset) that triggers a retrain.
    max_drift_share: float = 0.5
    retrain_on_target_drift: bool = True
    # Retrain when the champion's production RMSE exceeds its own held-out RMSE by this fraction.
    max_rmse_increase: float = 0.10
    # Retrain when the champion's production RMSE exceeds this absolute value (None: no such rule;
    # the study retrained whenever RMSE > 3.5).
    max_production_rmse: float | None = None


@dataclass(frozen=True)
class LivePolicy:
    """Live mode: when the labeled rows that arrived since the last retrain are worth considering one."""

    min_new_rows: int = 500  # per period (release year), across the new files


@dataclass(frozen=True)
class GatePolicy:
    """When a challenger replaces the champion."""

    # The challenger's RMSE must be at least this fraction below the champion's.
    min_improvement: float = 0.01
    holdout_fraction: float = 0.2
    # False: every challenger is promoted, as in the study (the benchmark replays it that way).
    enabled: bool = True
    # Minimum evidence. An RMSE on n rows is known to about ±1/sqrt(2n) of itself (normal errors):
    # ±10 % at 50 rows, so fewer held-out rows cannot rank two models at all and the gate refuses.
    min_holdout_rows: int = 50
    # A period with fewer curated rows is not trained on (its held-out split would be ~20 % of it).
    min_batch_rows: int = 100


@dataclass(frozen=True)
class TrendResidualConfig:
    """The default model: trend level + residual ensemble. Values measured on the seed data
    (benchmarks/prequential.py, docs/benchmark/; the research prototype is in git history)."""

    ensemble_size: int = 3
    hidden: tuple[int, ...] = (64, 32)
    dropout: float = 0.3
    epochs: int = 15
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    # False: every retrain trains from scratch on all labelled periods (the cost reference).
    fine_tune: bool = True
    fine_tune_epochs: int = 4
    fine_tune_learning_rate: float = 5e-4
    # Replayed earlier rows in a fine-tune, as a share of the new rows: guards against forgetting.
    replay_share: float = 0.5
    # Earlier rows kept in the model artifact to replay from (a uniform sample of all seen rows).
    replay_buffer_rows: int = 4000
    # Label-history features: shrinkage pseudo-count, yearly decay, yearly means in the trend.
    shrinkage: float = 3.0
    decay: float = 0.75
    trend_window: int = 4


@dataclass(frozen=True)
class TrainingConfig:
    strategy: Strategy = "trend_residual"
    freeze_layers: int = 3
    epochs: int = 30
    fine_tune_epochs: int = 30
    batch_size: int = 32
    learning_rate: float = 1e-3
    # Share of the new period's size drawn from earlier periods and added to a transfer fine-tune.
    replay_share: float = 0.0
    seed: int = 0
    trend_residual: TrendResidualConfig = TrendResidualConfig()
    # Years before the first model are pooled, as the study did: train once at warmup_end.
    warmup_start: int = 2008
    warmup_end: int = 2014


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    source: SourceName = "synthetic"
    mlflow_tracking_uri: str | None = None  # None: a SQLite file in the state directory
    experiment_name: str = "driftwheel"
    model_name: str = "spotify_popularity"
    dataset: DatasetSpec = DatasetSpec()
    file_source: FileSourceConfig = FileSourceConfig()
    synthetic: SyntheticConfig = SyntheticConfig()
    spotify: SpotifyConfig = SpotifyConfig()
    validation: ValidationPolicy = ValidationPolicy()
    drift: DriftPolicy = DriftPolicy()
    gate: GatePolicy = GatePolicy()
    live: LivePolicy = LivePolicy()
    training: TrainingConfig = TrainingConfig()
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
        """Settings from ``FLYWHEEL_*`` variables; anything unset keeps its default.

        ``FLYWHEEL_STATE_DIR`` (default ``<repo>/state``), ``FLYWHEEL_SOURCE``,
        ``FLYWHEEL_MLFLOW_TRACKING_URI``, ``FLYWHEEL_MODEL_NAME``, ``FLYWHEEL_LANDING_DIR``,
        ``FLYWHEEL_COLUMN_MAP`` (a JSON file, see :func:`load_column_map`),
        ``FLYWHEEL_ROWS_PER_YEAR``, ``FLYWHEEL_EPOCHS``, ``FLYWHEEL_WARMUP_START``,
        ``FLYWHEEL_WARMUP_END``, ``FLYWHEEL_SPOTIFY_MAX_TRACKS``, ``FLYWHEEL_SPOTIFY_API_BASE``,
        ``FLYWHEEL_SPOTIFY_AUTH_URL``, ``FLYWHEEL_LIVE_MIN_NEW_ROWS``.
        """
        env = os.environ if env is None else env
        settings = cls(state_dir=Path(env.get("FLYWHEEL_STATE_DIR", REPO_ROOT / "state")))
        changes: dict[str, Any] = {}
        if "FLYWHEEL_SOURCE" in env:
            changes["source"] = env["FLYWHEEL_SOURCE"]
        if env.get("FLYWHEEL_MLFLOW_TRACKING_URI"):
            changes["mlflow_tracking_uri"] = env["FLYWHEEL_MLFLOW_TRACKING_URI"]
        if "FLYWHEEL_MODEL_NAME" in env:
            changes["model_name"] = env["FLYWHEEL_MODEL_NAME"]
        if "FLYWHEEL_EXPERIMENT" in env:
            changes["experiment_name"] = env["FLYWHEEL_EXPERIMENT"]
        if env.get("FLYWHEEL_LOCK_URI"):
            changes["lock_uri"] = env["FLYWHEEL_LOCK_URI"]
        if env.get("FLYWHEEL_LANDING_ROOTS"):
            roots = env["FLYWHEEL_LANDING_ROOTS"].split(os.pathsep)
            changes["landing_roots"] = tuple(Path(r) for r in roots if r)
        gate: dict[str, Any] = {}
        for key, name in (("FLYWHEEL_MIN_HOLDOUT_ROWS", "min_holdout_rows"), ("FLYWHEEL_MIN_BATCH_ROWS", "min_batch_rows")):
            if env.get(key):
                gate[name] = int(env[key])
        if gate:
            changes["gate"] = dataclasses.replace(settings.gate, **gate)
        settings = dataclasses.replace(settings, **changes)
        if env.get("FLYWHEEL_COLUMN_MAP"):
            settings = settings.with_file_source(**load_column_map(Path(env["FLYWHEEL_COLUMN_MAP"])))
        if env.get("FLYWHEEL_LANDING_DIR"):
            settings = settings.with_file_source(landing_dir=Path(env["FLYWHEEL_LANDING_DIR"]))
        if "FLYWHEEL_ROWS_PER_YEAR" in env:
            settings = dataclasses.replace(
                settings,
                synthetic=dataclasses.replace(
                    settings.synthetic, rows_per_year=int(env["FLYWHEEL_ROWS_PER_YEAR"])
                ),
            )
        spotify: dict[str, Any] = {}
        for key, name in (
            ("FLYWHEEL_SPOTIFY_MAX_TRACKS", "max_tracks"),
            ("FLYWHEEL_SPOTIFY_API_BASE", "api_base"),
            ("FLYWHEEL_SPOTIFY_AUTH_URL", "auth_url"),
        ):
            if env.get(key):
                spotify[name] = int(env[key]) if name == "max_tracks" else env[key]
        if spotify:
            settings = dataclasses.replace(settings, spotify=dataclasses.replace(settings.spotify, **spotify))
        if env.get("FLYWHEEL_LIVE_MIN_NEW_ROWS"):
            settings = dataclasses.replace(settings, live=LivePolicy(min_new_rows=int(env["FLYWHEEL_LIVE_MIN_NEW_ROWS"])))
        training: dict[str, Any] = {}
        for key, name in (
            ("FLYWHEEL_EPOCHS", "epochs"),
            ("FLYWHEEL_FINE_TUNE_EPOCHS", "fine_tune_epochs"),
            ("FLYWHEEL_WARMUP_START", "warmup_start"),
            ("FLYWHEEL_WARMUP_END", "warmup_end"),
        ):
            if key in env:
                training[name] = int(env[key])
        if training:
            settings = dataclasses.replace(
                settings, training=dataclasses.replace(settings.training, **training)
            )
        return settings

    def with_file_source(self, **changes: Any) -> Settings:
        spec_changes = {k: changes.pop(k) for k in ("features", "optional_features") if k in changes}
        settings = dataclasses.replace(
            self, file_source=dataclasses.replace(self.file_source, **changes)
        )
        if spec_changes:
            settings = dataclasses.replace(
                settings, dataset=dataclasses.replace(settings.dataset, **spec_changes)
            )
        return settings

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
        if "landing_dir" in p and p["landing_dir"]:
            settings = settings.with_file_source(landing_dir=self.checked_landing_dir(Path(p["landing_dir"])))
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


# The Params a run may carry: those the DAGs declare (spotify_flywheel's form; min_new_rows is
# live_flywheel's). Anything else in a run's conf is refused, never applied.
RUN_PARAMS = frozenset(
    {
        "year",
        "source",
        "landing_dir",
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


_COLUMN_MAP_KEYS = {
    "columns": "column_map",
    "date_column": "date_column",
    "pattern": "pattern",
    "encoding": "encoding",
    "delimiter": "delimiter",
    "decimal": "decimal",
    "features": "features",
    "optional_features": "optional_features",
}


def _column_map_model() -> Any:
    """The pydantic model of a column-map file (built on first use: pydantic is not a cheap import)."""
    from pydantic import BaseModel, ConfigDict, Field, field_validator

    class ColumnMapFile(BaseModel):
        # strict: "features": "danceability" must not pass as the list of its letters.
        model_config = ConfigDict(extra="forbid", strict=True)

        columns: dict[str, str] | None = None
        date_column: str | None = None
        pattern: str | None = Field(default=None, min_length=1)
        encoding: str | None = None
        delimiter: str | None = Field(default=None, min_length=1, max_length=1)
        decimal: str | None = Field(default=None, min_length=1, max_length=1)
        features: list[str] | None = Field(default=None, min_length=1)
        optional_features: list[str] | None = None

        @field_validator("encoding")
        @classmethod
        def _known_encoding(cls, value: str | None) -> str | None:
            if value is not None:
                try:
                    codecs.lookup(value)
                except LookupError:
                    raise ValueError(f"unknown encoding {value!r} (e.g. \"utf-8\", \"latin-1\")") from None
            return value

    return ColumnMapFile


def load_column_map(path: Path, target: str = DatasetSpec.target) -> dict[str, Any]:
    """Read and validate a column-map file for the file source; return keyword arguments for
    :meth:`Settings.with_file_source` (including ``column_map_file=path``).

    The file is JSON: ``{"columns": {"source name": "spec name", ...}, "date_column": "release_date",
    "features": [...], "optional_features": [...], "pattern": "*.csv", "encoding": "latin-1",
    "delimiter": ";", "decimal": ","}``; every key is optional. Raises :class:`ColumnMapError`
    naming the file and the key (or the line, for malformed JSON) for unknown keys, values of the
    wrong type, an unknown encoding, a delimiter or decimal mark longer than one character, or the
    label ``target`` among the features.
    Whether the renamed source columns exist is checked when the landing files are read.
    """
    from pydantic import ValidationError

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
        parsed = _column_map_model().model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"key '{'.'.join(str(part) for part in e['loc'])}': {e['msg']}" for e in err.errors()
        )
        raise ColumnMapError(
            f"column map {path}: {problems} (allowed keys: {', '.join(_COLUMN_MAP_KEYS)})"
        ) from err
    for key in ("features", "optional_features"):
        if target in (getattr(parsed, key) or ()):
            raise ColumnMapError(f"column map {path}: key '{key}' lists the label '{target}', which is no feature")
    out: dict[str, Any] = {"column_map_file": path}
    for key, name in _COLUMN_MAP_KEYS.items():
        value = getattr(parsed, key)
        if value is not None:
            out[name] = tuple(value) if isinstance(value, list) else value
    return out
