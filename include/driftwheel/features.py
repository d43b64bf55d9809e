"""Leak-free model inputs: what is known about a track before its popularity is.

Two kinds of facts describe a track of period ``t``:

* the **label history** (:class:`LabelHistory`): per-period mean popularity and, per artist,
  guest artist, album and song title, how far above or below its period's mean earlier tracks
  landed. It is built from labelled rows only and travels inside the model artifact. Every
  feature of a row of period ``t`` reads the history of periods ``< t`` only, whatever the
  history holds, so a period's own labels can never reach its predictions;
* the **batch** itself, without labels: how many tracks an artist has in this period's batch,
  words in the title, whether the song is the album's title track, the audio features.

Popularity follows the label shift with :func:`trend_level` (a straight line through the last
yearly means, extrapolated, restarted after a step); the network learns only the residual around it.

Row order and the frame's index are never inputs: every batch statistic is a group count, and
rows are matched to history by name. Columns are configuration (:class:`FeatureColumns`): a data
set without artist, title or album columns simply gets fewer features.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from driftwheel.config import FeatureConfig

# Words in a song title that mark versions and collaborations; they move popularity in the seed
# data (a remix or live version of a hit sells less than the hit).
TITLE_WORDS: dict[str, str] = {
    "feat": r"\bfeat\b|\bft\.|featuring",
    "with": r"\(with ",
    "remix": r"remix|\bmix\b",
    "live": r"\blive\b",
    "remaster": r"remaster",
    "version": r"version",
    "edit": r"\bedit\b",
    "acoustic": r"acoustic",
    "soundtrack": r"\bfrom\b.*(?:soundtrack|motion picture|movie|series|musical)|soundtrack",
    "cast": r"\bcast\b|broadway",
}
ALBUM_WORDS: dict[str, str] = {
    "deluxe": r"deluxe|expanded|edition",
    "live": r"\blive\b",
    "best_of": r"greatest|best of|hits|collection|lo mejor|éxitos|exitos",
    "soundtrack": r"soundtrack|motion picture|original score|cast recording",
    "remix": r"remix",
    "feat": r"\bfeat\b|\(with ",
}

_GUEST_IN_BRACKETS = re.compile(r"[\(\[]\s*(?:feat\.?|ft\.?|featuring|with)\s+([^\)\]]+)[\)\]]", re.I)
_GUEST_AT_END = re.compile(r"\s(?:feat\.?|ft\.?|featuring)\s+(.+)$", re.I)
_NAME_SEPARATORS = re.compile(r"\s*(?:,|&|\band\b|\bx\b)\s*", re.I)
_VERSION_SUFFIX = re.compile(r"\s*[\(\[].*?[\)\]]|\s+-\s+.*$")

# Columns of the history's one long table (one row per key and period).
_HISTORY_COLUMNS = ("table", "key", "key2", "period", "n", "res_sum", "res_max")


@dataclass(frozen=True)
class FeatureColumns:
    """Which input columns exist. ``None`` for a column the data set lacks."""

    numeric: tuple[str, ...]
    period: str
    target: str
    artist: str | None = None
    title: str | None = None
    album: str | None = None

    def inputs(self) -> tuple[str, ...]:
        """The raw columns a prediction needs."""
        text = tuple(c for c in (self.artist, self.title, self.album) if c)
        return (self.period, *self.numeric, *text)


def guest_artists(title: str) -> list[str]:
    """Names in "Song (feat. A & B)" or "Song ft. A", in order."""
    match = _GUEST_IN_BRACKETS.search(title) or _GUEST_AT_END.search(title)
    if not match:
        return []
    return [p.strip() for p in _NAME_SEPARATORS.split(match.group(1)) if p.strip()]


def base_title(title: object) -> str:
    """A song or album name without bracketed parts or a " - Remix" suffix, lower-cased."""
    text = str(title)
    stripped = _VERSION_SUFFIX.sub("", text).strip().lower()
    return stripped or text.strip().lower()


def trend_level(period_means: pd.Series, period: int, window: int, step: float | None = None) -> float:
    """The label level expected in ``period``: a line through the last ``window`` means before it.

    Uses only means of periods ``< period``; one past period gives its mean, none gives NaN. With
    ``step``, a change of more than ``step`` between two consecutive means in the window is a step
    in the level, not a slope: the line goes through the means from the newest step on only (one
    mean after it gives that mean). A least-squares line through a one-off step reads it as a
    slope and extrapolates it for ``window`` periods.
    """
    past = period_means[period_means.index < period].sort_index().iloc[-window:]
    if step is not None and len(past) > 1:
        jumps = np.flatnonzero(np.abs(np.diff(past.to_numpy(float))) > step)
        if len(jumps):
            past = past.iloc[jumps[-1] + 1 :]
    if len(past) == 0:
        return float("nan")
    if len(past) == 1:
        return float(past.iloc[0])
    slope, intercept = np.polyfit(past.index.to_numpy(float), past.to_numpy(float), 1)
    return float(intercept + slope * period)


@dataclass(frozen=True)
class LabelHistory:
    """All a model knows from labels: per-period means and residual sums per key and period.

    ``table`` holds one row per (kind, key, period): ``n`` labelled tracks, the sum and the
    maximum of their residuals (popularity minus the period's mean). Kinds: ``artist``, ``guest``
    (an artist named in a title's "feat."), ``album`` (key: artist, key2: album) and ``title``.
    """

    period_means: pd.Series
    table: pd.DataFrame

    @classmethod
    def empty(cls) -> LabelHistory:
        return cls(pd.Series(dtype=float), pd.DataFrame({c: pd.Series(dtype=_dtype(c)) for c in _HISTORY_COLUMNS}))

    @classmethod
    def from_labelled(
        cls, frame: pd.DataFrame, columns: FeatureColumns, mean_rows: np.ndarray | None = None
    ) -> LabelHistory:
        """The history of labelled rows (any number of periods).

        A period's mean is taken over its ``mean_rows`` (default: all rows): a caller holding
        rows out for its gate keeps their labels out of the level its model reports for them.
        """
        use = np.ones(len(frame), dtype=bool) if mean_rows is None else np.asarray(mean_rows, dtype=bool)
        means = frame[use].groupby(columns.period)[columns.target].mean().astype(float)
        residual = frame[columns.target].astype(float) - frame[columns.period].map(means)
        period = frame[columns.period].astype(int)
        parts: list[pd.DataFrame] = []

        def add(kind: str, key: pd.Series, key2: pd.Series | None, res: pd.Series, per: pd.Series) -> None:
            keys = pd.DataFrame(
                {
                    "key": key.astype(str).to_numpy(),
                    "key2": "" if key2 is None else key2.astype(str).to_numpy(),
                    "period": per.to_numpy(),
                    "res": res.to_numpy(),
                }
            )
            grouped = (
                keys.groupby(["key", "key2", "period"], sort=True)["res"].agg(["size", "sum", "max"]).reset_index()
            )
            grouped.columns = ["key", "key2", "period", "n", "res_sum", "res_max"]
            parts.append(grouped.assign(table=kind))

        if columns.artist:
            add("artist", frame[columns.artist], None, residual, period)
            if columns.album:
                add("album", frame[columns.artist], frame[columns.album], residual, period)
        if columns.title:
            add("title", frame[columns.title].map(base_title), None, residual, period)
            guests = frame[columns.title].astype(str).map(guest_artists)
            exploded = (
                pd.DataFrame({"guest": guests, "res": residual, "period": period})
                .explode("guest")
                .dropna(subset=["guest"])
            )
            if len(exploded):
                add("guest", exploded["guest"], None, exploded["res"], exploded["period"])
        table = pd.concat(parts, ignore_index=True)[list(_HISTORY_COLUMNS)] if parts else cls.empty().table
        return cls(means.sort_index(), table.astype({c: _dtype(c) for c in _HISTORY_COLUMNS}))

    def updated(self, newer: LabelHistory) -> LabelHistory:
        """This history with ``newer``'s periods added; a period present in both takes ``newer``'s rows.

        Keys never seen before simply add rows: the vocabulary grows with every retrain and old
        keys stay.
        """
        replaced = set(int(p) for p in newer.period_means.index)
        keep_means = self.period_means[~self.period_means.index.isin(replaced)]
        keep_table = self.table[~self.table["period"].isin(replaced)]
        means = pd.concat([keep_means, newer.period_means]).sort_index()
        table = pd.concat([keep_table, newer.table], ignore_index=True)
        return LabelHistory(means, table)

    def before(self, period: int) -> LabelHistory:
        return LabelHistory(
            self.period_means[self.period_means.index < period], self.table[self.table["period"] < period]
        )

    @property
    def periods(self) -> list[int]:
        return [int(p) for p in self.period_means.index]

    def save(self, path: Path) -> None:
        """One Parquet file; the period means are rows of kind ``period_mean``."""
        means = pd.DataFrame(
            {
                "table": "period_mean",
                "key": "",
                "key2": "",
                "period": self.period_means.index.astype(int),
                "n": 0,
                "res_sum": self.period_means.to_numpy(float),
                "res_max": 0.0,
            }
        )
        pd.concat([self.table, means], ignore_index=True).to_parquet(path, index=False)

    @classmethod
    def load(cls, path: Path) -> LabelHistory:
        raw = pd.read_parquet(path)
        means_rows = raw[raw["table"] == "period_mean"]
        means = pd.Series(
            means_rows["res_sum"].to_numpy(float), index=means_rows["period"].astype(int).to_numpy()
        ).sort_index()
        table = raw[raw["table"] != "period_mean"].reset_index(drop=True)
        return cls(means, table.astype({c: _dtype(c) for c in _HISTORY_COLUMNS}))


def _dtype(column: str) -> str:
    return {"table": "object", "key": "object", "key2": "object", "period": "int64", "n": "float64"}.get(
        column, "float64"
    )


# -- building the features of one period's batch ------------------------------------------------
# Rows featurized at once: the per-row work (text parsing, lookups, the float32 columns) runs on
# slices of this many rows, so a million-row period never holds a million rows' intermediates.
# Each row's features depend on the row and on its period's context only, so slices change nothing.
FEATURE_BATCH_ROWS = 65_536


def iter_features(
    history: LabelHistory,
    batch: pd.DataFrame,
    columns: FeatureColumns,
    config: FeatureConfig,
    rows: np.ndarray | None = None,
) -> Iterator[tuple[np.ndarray, pd.DataFrame]]:
    """The features of ``batch``'s rows (those where ``rows`` is true, default all), slice by slice:
    ``(positions in batch, their features)``, at most :data:`FEATURE_BATCH_ROWS` rows at a time.

    Rows are grouped by period; each period is one ingest batch, described from
    ``history.before(period)`` and its own label-free columns. The period's context (history
    aggregates, group counts over every row of the period) is computed once, so a row's features
    are the same whether it is asked for alone or with all the others, while the memory held is
    that of one slice.
    """
    wanted = np.ones(len(batch), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    if len(wanted) != len(batch):
        raise ValueError(f"rows has {len(wanted)} entries for a batch of {len(batch)} rows")
    if batch.empty or not wanted.any():
        return
    unlabelled = batch.drop(columns=[columns.target], errors="ignore").reset_index(drop=True)
    for period, group in unlabelled.groupby(columns.period, sort=True):
        positions = group.index.to_numpy()
        kept = np.flatnonzero(wanted[positions])
        if not len(kept):
            continue
        context = _period_context(history.before(int(period)), group, int(period), columns, config)
        for start in range(0, len(kept), FEATURE_BATCH_ROWS):
            part = kept[start : start + FEATURE_BATCH_ROWS]
            features = _period_features(context, group.iloc[part].reset_index(drop=True), columns, config)
            yield positions[part], features


def build_features(
    history: LabelHistory,
    batch: pd.DataFrame,
    columns: FeatureColumns,
    config: FeatureConfig,
    rows: np.ndarray | None = None,
) -> pd.DataFrame:
    """One row of model inputs per row of ``batch`` (or per row where ``rows`` is true), in batch
    order and with its index: :func:`iter_features` gathered. The label column, if present, is
    never read. Pass a whole period at once: batch features count tracks within the frame."""
    wanted = np.ones(len(batch), dtype=bool) if rows is None else np.asarray(rows, dtype=bool)
    pieces = [built.set_axis(positions) for positions, built in iter_features(history, batch, columns, config, rows)]
    if not pieces:
        probe = batch.drop(columns=[columns.target], errors="ignore").head(0)
        empty = _period_features(
            _period_context(LabelHistory.empty(), probe, 0, columns, config), probe, columns, config
        )
        return empty.set_axis(batch.index[:0])
    return pd.concat(pieces).sort_index().set_axis(batch.index[wanted])


def feature_names(columns: FeatureColumns) -> tuple[str, ...]:
    """The names :func:`build_features` produces for these columns, in order."""
    probe = pd.DataFrame({c: pd.Series(dtype=float) for c in (columns.period, *columns.numeric)})
    for c in (columns.artist, columns.title, columns.album):
        if c:
            probe[c] = pd.Series(dtype=object)
    return tuple(build_features(LabelHistory.empty(), probe, columns, FeatureConfig()).columns)


def _aggregate(table: pd.DataFrame, kind: str, period: int, decay: float) -> pd.DataFrame:
    """Per key (and key2) of ``kind``: counts, residual sums, decayed sums, last period, max."""
    rows = table[table["table"] == kind]
    if rows.empty:
        empty_index = pd.MultiIndex.from_arrays([[], []], names=["key", "key2"])
        return pd.DataFrame(
            columns=["n", "s", "ws", "wn", "periods", "last", "mx", "last_res"], index=empty_index, dtype=float
        )
    weight = decay ** (period - 1 - rows["period"].to_numpy(float))
    rows = rows.assign(ws=weight * rows["res_sum"].to_numpy(), wn=weight * rows["n"].to_numpy())
    grouped = rows.groupby(["key", "key2"], sort=False)
    out = pd.DataFrame(
        {
            "n": grouped["n"].sum(),
            "s": grouped["res_sum"].sum(),
            "ws": grouped["ws"].sum(),
            "wn": grouped["wn"].sum(),
            "periods": grouped["period"].nunique(),
            "last": grouped["period"].max(),
            "mx": grouped["res_max"].max(),
        }
    )
    newest = rows.loc[grouped["period"].idxmax()].set_index(["key", "key2"])
    out["last_res"] = newest["res_sum"] / newest["n"]
    return out


def _lookup(aggregated: pd.DataFrame, key: pd.Series, key2: pd.Series | None = None) -> pd.DataFrame:
    index = pd.MultiIndex.from_arrays(
        [key.astype(str), key2.astype(str) if key2 is not None else pd.Series("", index=key.index)]
    )
    return aggregated.reindex(index).reset_index(drop=True).fillna(0.0)


def _count(counts: pd.Series, key: pd.Series, key2: pd.Series | None = None) -> np.ndarray:
    """Each row's group size from a period's ``counts`` (every row's key is in them)."""
    index = key if key2 is None else pd.MultiIndex.from_arrays([key, key2])
    return counts.reindex(index).astype(float).to_numpy()


def _non_ascii(values: pd.Series) -> np.ndarray:
    return values.astype(str).map(lambda text: float(any(ord(ch) > 127 for ch in text))).to_numpy(float)


@dataclass(frozen=True)
class _PeriodContext:
    """What a row's features read besides the row itself, computed once per period: the label
    history aggregated as of the period (per kind of key) and the batch's group sizes over every
    row of the period (tracks per artist, copies of a title, ...)."""

    period: int
    history: dict[str, pd.DataFrame]
    batch: dict[str, pd.Series]
    # Past record of each artist as main artist or guest, for the guest features.
    artist_sums: dict[str, float]
    artist_counts: dict[str, float]
    batch_artists: dict[str, int]


def _period_context(
    history: LabelHistory, b: pd.DataFrame, period: int, columns: FeatureColumns, config: FeatureConfig
) -> _PeriodContext:
    table = history.table
    aggregated = {kind: _aggregate(table, kind, period, config.decay) for kind in ("artist", "guest", "title", "album")}
    batch: dict[str, pd.Series] = {}
    artist = b[columns.artist].astype(str) if columns.artist else None
    title = b[columns.title].astype(str) if columns.title else None
    album = b[columns.album].astype(str) if columns.album else None
    artist_sums: dict[str, float] = {}
    artist_counts: dict[str, float] = {}
    batch_artists: dict[str, int] = {}
    if artist is not None:
        batch["artist"] = artist.value_counts()
        batch_artists = batch["artist"].to_dict()
    if title is not None:
        base = title.map(base_title)
        batch["base_title"] = base.value_counts()
        if artist is not None:
            guests = title.map(guest_artists)
            batch["guest_mentions"] = guests.explode().dropna().value_counts()
            batch["artist_base_title"] = base.groupby([artist, base]).size()
            as_artist, as_guest = aggregated["artist"], aggregated["guest"]
            sums = as_artist["s"].groupby(level=0).sum().add(as_guest["s"].groupby(level=0).sum(), fill_value=0.0)
            counts = as_artist["n"].groupby(level=0).sum().add(as_guest["n"].groupby(level=0).sum(), fill_value=0.0)
            artist_sums, artist_counts = sums.to_dict(), counts.to_dict()
    if album is not None:
        batch["album"] = album.value_counts()
        if artist is not None:
            batch["artist_album"] = album.groupby([artist, album]).size()
            batch["artist_albums"] = album.groupby(artist).nunique()
    return _PeriodContext(period, aggregated, batch, artist_sums, artist_counts, batch_artists)


def _period_features(
    context: _PeriodContext, b: pd.DataFrame, columns: FeatureColumns, config: FeatureConfig
) -> pd.DataFrame:
    """The features of ``b``'s rows (some rows of the context's period), as float32 columns."""
    k = config.shrinkage
    period = context.period
    out: dict[str, np.ndarray] = {}

    def put(name: str, values: np.ndarray | pd.Series) -> None:
        out[name] = np.asarray(values, dtype=np.float32)

    for name in columns.numeric:
        put(name, b[name].astype(float).to_numpy())
    if "duration_ms" in columns.numeric:
        # Durations are heavy-tailed: a 20-minute mix would dominate a standardized raw value.
        put("duration_ms", np.log(b["duration_ms"].astype(float).clip(lower=30_000)).to_numpy())

    artist = b[columns.artist].astype(str) if columns.artist else None
    title = b[columns.title].astype(str) if columns.title else None
    album = b[columns.album].astype(str) if columns.album else None
    seen = context.history
    batch = context.batch

    if artist is not None:
        a = _lookup(seen["artist"], artist)
        n = a["n"].to_numpy(float)
        put("artist_seen", (n > 0).astype(float))
        put("artist_log_tracks", np.log1p(n))
        put("artist_periods", a["periods"].to_numpy(float))
        put("artist_shrunk_residual", a["s"].to_numpy(float) / (n + k))
        put("artist_decayed_residual", a["ws"].to_numpy(float) / (a["wn"].to_numpy(float) + 1.0))
        put("artist_periods_since", np.where(n > 0, period - a["last"].to_numpy(float), 0.0))
        put("artist_last_residual", a["last_res"].to_numpy(float) * (n / (n + k)))
        put("artist_max_residual", a["mx"].to_numpy(float))
        per_period = np.divide(n, a["periods"].to_numpy(float), out=np.zeros_like(n), where=n > 0)
        put("artist_log_tracks_per_period", np.log1p(per_period))
        in_batch = _count(batch["artist"], artist)
        put("batch_artist_log_tracks", np.log(in_batch))
        # More tracks in this batch than the artist usually places: a breakout year.
        put("batch_artist_vs_history", np.log(in_batch) - np.where(n > 0, np.log1p(per_period), 0.0))
        put("artist_non_ascii", _non_ascii(artist))
        guest = _lookup(seen["guest"], artist)
        put("artist_guest_shrunk_residual", guest["s"].to_numpy(float) / (guest["n"].to_numpy(float) + k))
        put("artist_guest_log_tracks", np.log1p(guest["n"].to_numpy(float)))

    if title is not None:
        lower = title.str.lower()
        for name, pattern in TITLE_WORDS.items():
            put(f"title_{name}", lower.str.contains(pattern, regex=True).to_numpy(float))
        put("title_dash", lower.str.contains(" - ", regex=False).to_numpy(float))
        put("title_brackets", lower.str.contains(r"[\(\[]", regex=True).to_numpy(float))
        put("title_non_ascii", _non_ascii(title))
        put("title_log_length", np.log1p(lower.str.len().to_numpy(float)))
        base = title.map(base_title)
        put("batch_title_log_copies", np.log(_count(batch["base_title"], base)))
        seen_title = _lookup(seen["title"], base)
        put("title_seen_log_tracks", np.log1p(seen_title["n"].to_numpy(float)))
        put("title_seen_shrunk_residual", seen_title["s"].to_numpy(float) / (seen_title["n"].to_numpy(float) + k))
        guests = title.map(guest_artists)
        put("guest_count", guests.map(len).to_numpy(float))
        if artist is not None:
            for name, values in _guest_features(guests, artist, context, config).items():
                put(name, values)
            put("batch_artist_title_log_copies", np.log(_count(batch["artist_base_title"], artist, base)))

    if album is not None:
        lower_album = album.str.lower()
        for name, pattern in ALBUM_WORDS.items():
            put(f"album_{name}", lower_album.str.contains(pattern, regex=True).to_numpy(float))
        put("batch_album_log_tracks", np.log(_count(batch["album"], album)))
        if artist is not None:
            by_artist_album = _count(batch["artist_album"], artist, album)
            put("batch_artist_album_log_tracks", np.log(by_artist_album))
            put("batch_artist_log_albums", np.log(_count(batch["artist_albums"], artist)))
            put("batch_artist_album_share", by_artist_album / in_batch)
            seen_album = _lookup(seen["album"], artist, album)
            put("album_seen_log_tracks", np.log1p(seen_album["n"].to_numpy(float)))
            put("album_seen_shrunk_residual", seen_album["s"].to_numpy(float) / (seen_album["n"].to_numpy(float) + k))
        if title is not None:
            album_base = album.map(base_title)
            put("single", (lower == lower_album).to_numpy(float))
            put("title_track", (base.to_numpy() == album_base.to_numpy()).astype(float))
            put("title_in_album_name", np.array([float(s in a) for s, a in zip(base, lower_album)], dtype=float))
    return pd.DataFrame(out, index=b.index, copy=False)


def _guest_features(
    guests: pd.Series, artist: pd.Series, context: _PeriodContext, config: FeatureConfig
) -> dict[str, np.ndarray]:
    """The track's guest artists: their past record (as main artist or guest) and demand this batch."""
    k = config.shrinkage
    sums, counts = context.artist_sums, context.artist_counts
    best_residual = np.zeros(len(guests))
    best_count = np.zeros(len(guests))
    seen = np.zeros(len(guests))
    for i, names in enumerate(guests):
        known = [name for name in names if counts.get(name, 0.0) > 0]
        if known:
            best_residual[i] = max(sums[name] / (counts[name] + k) for name in known)
            best_count[i] = np.log1p(max(counts[name] for name in known))
            seen[i] = 1.0
    batch_artists = context.batch_artists
    return {
        "guest_shrunk_residual": best_residual,
        "guest_log_tracks": best_count,
        "guest_seen": seen,
        # How many of this batch's tracks feature the artist as a guest: demand this period.
        "batch_artist_as_guest_log": np.log1p(
            artist.map(context.batch["guest_mentions"]).fillna(0.0).astype(float).to_numpy()
        ),
        "batch_guests_as_artists_log": guests.map(
            lambda names: float(np.log1p(sum(batch_artists.get(n, 0) for n in names)))
        ).to_numpy(float),
    }
