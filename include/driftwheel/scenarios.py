"""Drift scenarios as data: which change the synthetic source makes, with which shape over the years.

A :class:`Scenario` is a baseline (``spotify_like``: the source's built-in Spotify-shaped schedule;
``stable``: a constant label level and feature distribution) plus any number of shifts (:class:`Shift`).
A shift has

- a **kind**: ``covariate`` (the named features' distributions move, the feature->target relation
  does not), ``label`` (the target's level moves: prior shift), ``concept`` (the named features'
  weights in the target change, up to a sign flip, while the inputs keep their distribution) or
  ``new_artists`` (a share of the tracks is by artists never seen before);
- a **shape**: ``sudden`` (from ``start`` on), ``gradual`` (from ``start``, a growing share of the
  rows follows the new regime, all of them after ``years`` years), ``incremental`` (every row
  moves a growing part of the way, all of it after ``years`` years), ``recurring`` (on for the
  first half of every ``years``-year period from ``start``, off for the second half) or ``blip``
  (on for ``years`` years from ``start``, then back to the baseline);
- a **severity**, in the kind's unit: standard deviations of the feature's latent normal
  (covariate), popularity points (label), the fraction of a full sign flip of the weight, 0..1
  (concept), the share of tracks by new artists, 0..1 (new_artists).

Scenarios are named presets (:data:`PRESETS`: every kind x shape but ``new_artists_incremental``,
which would be ``new_artists_gradual`` again, plus ``stable`` and ``spotify_like``, the default)
or JSON files of the same fields, read with :func:`load_scenario`. Validation is strict (no
coercion, no unknown keys) and errors name the key. Generation stays a
pure function of ``(seed, year, scenario)``: see :mod:`driftwheel.sources.synthetic`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

__all__ = [
    "CONCEPT_FEATURES",
    "COVARIATE_FEATURES",
    "DEFAULT_SCENARIO",
    "PRESETS",
    "Scenario",
    "ScenarioError",
    "Shift",
    "load_scenario",
]

Kind = Literal["covariate", "label", "concept", "new_artists"]
Shape = Literal["sudden", "gradual", "incremental", "recurring", "blip"]
KINDS: tuple[Kind, ...] = ("covariate", "label", "concept", "new_artists")
# Shapes that are another shape again for a kind: a track's artist is new or it is not, so moving
# every row part of the way (incremental) is moving a growing share of them (gradual).
_SAME_AS_ANOTHER: frozenset[tuple[Kind, Shape]] = frozenset({("new_artists", "incremental")})


def kind_takes(kind: Kind, shape: Shape) -> bool:
    """Whether a shift of ``kind`` can have ``shape`` (presets exist for exactly these pairs)."""
    return (kind, shape) not in _SAME_AS_ANOTHER


SHAPES: tuple[Shape, ...] = ("sudden", "gradual", "incremental", "recurring", "blip")

# The continuous audio features the synthetic source draws from latent normals (a covariate shift
# moves a latent), and the five of them the popularity label depends on (a concept shift changes
# one's weight). driftwheel.sources.synthetic checks that these match its own tables.
COVARIATE_FEATURES: tuple[str, ...] = (
    "danceability",
    "energy",
    "loudness",
    "speechiness",
    "acousticness",
    "instrumentalness",
    "liveness",
    "valence",
    "tempo",
    "duration_ms",
)
CONCEPT_FEATURES: tuple[str, ...] = ("danceability", "energy", "loudness", "acousticness", "speechiness")

DEFAULT_SCENARIO = "spotify_like"
# The years the spotify_like baseline steps (its label level and feature shift jump; the years
# between drift slowly): driftwheel.sources.synthetic's POPULARITY_LEVEL and COVARIATE_SHIFT.
SPOTIFY_LIKE_CHANGES: tuple[int, ...] = (2015, 2018)

_STRICT = ConfigDict(extra="forbid", strict=True, frozen=True)
# Strict, but a Python list is as good a sequence as a JSON array (strict mode takes only tuples).
_Sequence = Field(strict=False)


class ScenarioError(ValueError):
    """A scenario name that is no preset, or a scenario file that cannot be read or is invalid."""


class Shift(BaseModel):
    """One change of the synthetic data: its kind, its shape over the years and its severity."""

    model_config = _STRICT

    kind: Kind
    shape: Shape
    start: Annotated[int, Field(ge=0)]  # the first year that differs from the baseline
    # gradual/incremental: years until the full severity; blip: how long it lasts; recurring: the period.
    years: Annotated[int, Field(ge=1)] = 1
    severity: float
    features: Annotated[tuple[str, ...], _Sequence] = ()  # covariate and concept only: the features that change

    @model_validator(mode="after")
    def _consistent(self) -> Shift:
        allowed = {"covariate": COVARIATE_FEATURES, "concept": CONCEPT_FEATURES}.get(self.kind)
        if allowed is None and self.features:
            raise ValueError(f"features: a {self.kind} shift takes no features")
        if allowed is not None:
            if not self.features:
                raise ValueError(f"features: a {self.kind} shift needs at least one of {', '.join(allowed)}")
            unknown = [f for f in self.features if f not in allowed]
            if unknown:
                raise ValueError(
                    f"features: {', '.join(map(repr, unknown))} cannot take a {self.kind} shift; "
                    f"allowed: {', '.join(allowed)}"
                )
        if self.kind in ("concept", "new_artists") and not 0.0 <= self.severity <= 1.0:
            raise ValueError(f"severity: a {self.kind} shift's severity lies in 0..1, got {self.severity}")
        if not math.isfinite(self.severity):
            raise ValueError(f"severity: must be finite, got {self.severity}")
        if not kind_takes(self.kind, self.shape):
            raise ValueError(
                f"shape: a {self.kind} shift cannot be {self.shape} (a track's artist is new or not); use gradual"
            )
        if self.shape == "recurring" and self.years < 2:
            raise ValueError(f"years: a recurring shift's period is at least 2 years, got {self.years}")
        return self

    def intensity(self, year: int) -> float:
        """How far the change has come in ``year``, 0 (baseline) to 1 (full severity).

        For a ``gradual`` shift this is the share of the year's rows in the new regime, for the
        other shapes the part of the severity every row gets.
        """
        elapsed = year - self.start
        if elapsed < 0:
            return 0.0
        if self.shape == "sudden":
            return 1.0
        if self.shape in ("gradual", "incremental"):
            return min(1.0, (elapsed + 1) / self.years)
        if self.shape == "blip":
            return 1.0 if elapsed < self.years else 0.0
        return 1.0 if elapsed % self.years < (self.years + 1) // 2 else 0.0  # recurring


class Scenario(BaseModel):
    """A baseline and the shifts made on top of it; see the module docstring."""

    model_config = _STRICT

    name: Annotated[str, Field(min_length=1)]
    description: str = ""
    # spotify_like: the synthetic source's built-in schedule (label and feature drift in 2015 and
    # 2018); stable: the same label level and feature distribution in every year.
    baseline: Literal["spotify_like", "stable"] = "stable"
    shifts: Annotated[tuple[Shift, ...], _Sequence] = ()

    @property
    def change_years(self) -> tuple[int, ...]:
        """The years in which a shift starts, or the baseline steps (where a plot marks the change)."""
        baseline = SPOTIFY_LIKE_CHANGES if self.baseline == "spotify_like" else ()
        return tuple(sorted({*baseline, *(s.start for s in self.shifts)}))


# -- presets -----------------------------------------------------------------------------------
# Every preset changes in 2016: after the default warm-up (2008-2014) and one quiet year to settle
# in, with four more years (2017-2020) to show whether a policy keeps up, recovers, or over-reacts.
_START = 2016
_YEARS = {"sudden": 1, "gradual": 4, "incremental": 4, "recurring": 4, "blip": 2}
_SHAPE_TEXT = {
    "sudden": "at once in 2016",
    "gradual": "in a growing share of tracks over 2016-2019",
    "incremental": "a step further every year over 2016-2019",
    "recurring": "in 2016-2017 and 2020, off in 2018-2019 (a 4-year cycle)",
    "blip": "in 2016-2017 only, then back",
}
# Features that enter the label linearly (energy, acousticness) or not at all (tempo): moving
# them leaves the feature->target relation as it was.
_KINDS: dict[Kind, tuple[float, tuple[str, ...], str]] = {
    "covariate": (1.5, ("energy", "acousticness", "tempo"), "energy, acousticness and tempo move by 1.5 sd"),
    "label": (8.0, (), "popularity rises by 8 points"),
    "concept": (1.0, ("danceability",), "danceability's weight in popularity flips sign"),
    "new_artists": (0.5, (), "half of the tracks are by artists never seen before"),
}


def _preset(kind: Kind, shape: Shape) -> Scenario:
    severity, features, text = _KINDS[kind]
    shift = Shift(kind=kind, shape=shape, start=_START, years=_YEARS[shape], severity=severity, features=features)
    return Scenario(name=f"{kind}_{shape}", description=f"{text}, {_SHAPE_TEXT[shape]}", shifts=(shift,))


PRESETS: dict[str, Scenario] = {
    DEFAULT_SCENARIO: Scenario(
        name=DEFAULT_SCENARIO,
        description="the built-in Spotify-shaped schedule: label and feature drift in 2015 and 2018",
        baseline="spotify_like",
    ),
    "stable": Scenario(name="stable", description="no drift: every year from the same distribution"),
    **{f"{kind}_{shape}": _preset(kind, shape) for kind in KINDS for shape in SHAPES if kind_takes(kind, shape)},
}


def load_scenario(spec: str) -> Scenario:
    """The preset named ``spec``, else the scenario in the JSON file at path ``spec``.

    Raises :class:`ScenarioError` naming the presets when ``spec`` is neither, and naming the key
    when the file's content is invalid.
    """
    if spec in PRESETS:
        return PRESETS[spec]
    path = Path(spec)
    if not path.is_file():
        raise ScenarioError(f"unknown scenario {spec!r}: neither a preset ({', '.join(PRESETS)}) nor a JSON file")
    try:
        return Scenario.model_validate_json(path.read_bytes())
    except ValidationError as err:
        problems = [f"{'.'.join(str(p) for p in e['loc']) or '(top level)'}: {e['msg']}" for e in err.errors()]
        raise ScenarioError(f"invalid scenario file {path}: " + "; ".join(problems)) from None
    except OSError as err:
        raise ScenarioError(f"cannot read scenario file {path}: {err}") from None
