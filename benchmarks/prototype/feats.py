"""Leak-free feature construction for the popularity flywheel prototype.

``year_features(history, batch, year)`` builds one row of features per track of ``batch`` (year Y)
from ``history`` (labelled rows of years < Y) and from label-free facts about the batch itself.
The batch is passed WITHOUT its label column, so nothing here can read year Y's popularity.
"""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

DATA = "/work/shared/data/spotify_seed/tracks_2008_2019.csv"
AUDIO = (
    "danceability", "energy", "key", "loudness", "mode", "speechiness", "acousticness",
    "instrumentalness", "liveness", "valence", "tempo", "duration_ms", "time_signature",
)
TARGET = "popularity"

_FEAT_RE = re.compile(r"[\(\[]\s*(?:feat\.?|ft\.?|featuring|with)\s+([^\)\]]+)[\)\]]", re.I)
_FEAT_RE2 = re.compile(r"\s(?:feat\.?|ft\.?|featuring)\s+(.+)$", re.I)
_SPLIT_RE = re.compile(r"\s*(?:,|&|\band\b|\bx\b)\s*", re.I)

TITLE_WORDS = {
    "t_feat": r"\bfeat\b|\bft\.|featuring",
    "t_with": r"\(with ",
    "t_remix": r"remix|\bmix\b",
    "t_live": r"\blive\b",
    "t_remaster": r"remaster",
    "t_version": r"version",
    "t_edit": r"\bedit\b",
    "t_acoustic": r"acoustic",
    "t_from": r"\bfrom\b.*(?:soundtrack|motion picture|movie|series|musical)|soundtrack",
    "t_cast": r"\bcast\b|broadway",
}
ALBUM_WORDS = {
    "al_deluxe": r"deluxe|expanded|edition",
    "al_live": r"\blive\b",
    "al_best": r"greatest|best of|hits|collection|lo mejor|éxitos|exitos",
    "al_soundtrack": r"soundtrack|motion picture|original score|cast recording",
    "al_remix": r"remix",
    "al_feat": r"\bfeat\b|\(with ",
}


def load() -> pd.DataFrame:
    return pd.read_csv(DATA)


def featured_artists(song: str) -> list[str]:
    m = _FEAT_RE.search(song) or _FEAT_RE2.search(song)
    if not m:
        return []
    return [p.strip() for p in _SPLIT_RE.split(m.group(1)) if p.strip()]


_BASE_RE = re.compile(r"\s*[\(\[].*?[\)\]]|\s+-\s+.*$")


def base_title(s: str) -> str:
    """Song or album name without bracketed parts or a " - Remix"-style suffix, lower-cased."""
    t = _BASE_RE.sub("", str(s)).strip().lower()
    return t or str(s).strip().lower()


def _nonascii(s: pd.Series) -> pd.Series:
    return s.astype(str).map(lambda t: float(any(ord(c) > 127 for c in t)))


def _shrunk(sum_: pd.Series, n: pd.Series, k: float) -> pd.Series:
    return sum_ / (n + k)


def year_features(history: pd.DataFrame, batch: pd.DataFrame, year: int, shrink: float = 3.0) -> pd.DataFrame:
    """Features of ``batch`` (year ``year``, no labels) from ``history`` (labelled, years < year)."""
    assert TARGET not in batch.columns, "the batch must come without its labels"
    assert (history["year"] < year).all()
    b = batch.reset_index(drop=True)
    out = pd.DataFrame(index=b.index)

    # -- audio -------------------------------------------------------------------------------
    for c in AUDIO:
        out[c] = b[c].astype(float)
    out["duration_ms"] = np.log(b["duration_ms"].clip(lower=30_000))

    # -- artist history (labels of earlier years only) ---------------------------------------
    if len(history):
        h = history[["year", "artist_name", "album_name", "song_name", TARGET]].copy()
        ymean = h.groupby("year")[TARGET].transform("mean")
        h["res"] = h[TARGET] - ymean
        h["w"] = 0.75 ** (year - 1 - h["year"])
        h["wres"] = h["w"] * h["res"]
        g = h.groupby("artist_name")
        a = pd.DataFrame({
            "n": g.size(),
            "s": g["res"].sum(),
            "ws": g["wres"].sum(),
            "wn": g["w"].sum(),
            "years": g["year"].nunique(),
            "last": g["year"].max(),
            "mx": g["res"].max(),
        })
        last_res = h[h["year"] == h["artist_name"].map(a["last"])].groupby("artist_name")["res"].mean()
        a["last_res"] = last_res
        # appearances as a featured artist in earlier years
        fe = h.assign(fa=h["song_name"].map(featured_artists)).explode("fa").dropna(subset=["fa"])
        fg = fe.groupby("fa")["res"].agg(["sum", "count"])
        # album (artist+album) seen in earlier years
        alb = h.groupby(["artist_name", "album_name"])["res"].agg(["sum", "count"])
    else:
        a = pd.DataFrame(columns=["n", "s", "ws", "wn", "years", "last", "mx", "last_res"], dtype=float)
        fg = pd.DataFrame(columns=["sum", "count"], dtype=float)
        alb = pd.DataFrame(columns=["sum", "count"], dtype=float,
                           index=pd.MultiIndex.from_tuples([], names=["artist_name", "album_name"]))

    j = a.reindex(b["artist_name"]).reset_index(drop=True)
    n = j["n"].fillna(0.0)
    out["a_seen"] = (n > 0).astype(float)
    out["a_logn"] = np.log1p(n)
    out["a_years"] = j["years"].fillna(0.0)
    out["a_shr"] = _shrunk(j["s"].fillna(0.0), n, shrink)
    out["a_wshr"] = _shrunk(j["ws"].fillna(0.0), j["wn"].fillna(0.0), 1.0)
    out["a_gap"] = np.where(n > 0, year - j["last"].fillna(year), 0.0)
    out["a_last_res"] = j["last_res"].fillna(0.0) * (n / (n + shrink))
    out["a_max"] = j["mx"].fillna(0.0)
    out["a_per_year"] = np.log1p((n / j["years"].replace(0, np.nan)).fillna(0.0))

    # the artist as a featured guest in earlier years
    fj = fg.reindex(b["artist_name"]).reset_index(drop=True)
    out["a_guest_shr"] = _shrunk(fj["sum"].fillna(0.0), fj["count"].fillna(0.0), shrink)
    out["a_guest_logn"] = np.log1p(fj["count"].fillna(0.0))

    # featured artists of this track and their history (as primary or guest)
    feats = b["song_name"].astype(str).map(featured_artists)
    def best(names: list[str]) -> tuple[float, float, float]:
        vals, ns = [], []
        for nm in names:
            s_, n_ = 0.0, 0.0
            if nm in a.index:
                s_ += float(a.at[nm, "s"]); n_ += float(a.at[nm, "n"])
            if nm in fg.index:
                s_ += float(fg.at[nm, "sum"]); n_ += float(fg.at[nm, "count"])
            if n_ > 0:
                vals.append(s_ / (n_ + shrink)); ns.append(n_)
        if not vals:
            return 0.0, 0.0, 0.0
        return max(vals), float(np.log1p(max(ns))), 1.0
    fb = np.array([best(f) for f in feats]) if len(b) else np.zeros((0, 3))
    out["f_n"] = feats.map(len).astype(float)
    out["f_shr"] = fb[:, 0]
    out["f_logn"] = fb[:, 1]
    out["f_seen"] = fb[:, 2]

    # album (artist + album name) seen in earlier years: re-releases, deluxe editions
    key = pd.MultiIndex.from_arrays([b["artist_name"], b["album_name"]])
    aj = alb.reindex(key)
    out["al_prev_logn"] = np.log1p(aj["count"].fillna(0.0).to_numpy())
    out["al_prev_shr"] = _shrunk(aj["sum"].fillna(0.0), aj["count"].fillna(0.0), shrink).to_numpy()

    # -- the batch itself, without labels --------------------------------------------------------
    n_art = b.groupby("artist_name")["artist_name"].transform("size").astype(float)
    n_alb = b.groupby(["artist_name", "album_name"])["artist_name"].transform("size").astype(float)
    n_alb_any = b.groupby("album_name")["album_name"].transform("size").astype(float)
    n_art_albums = b.groupby("artist_name")["album_name"].transform("nunique").astype(float)
    out["b_art_logn"] = np.log(n_art)
    out["b_alb_logn"] = np.log(n_alb)
    out["b_albany_logn"] = np.log(n_alb_any)
    out["b_art_albums"] = np.log(n_art_albums)
    out["b_alb_share"] = n_alb / n_art
    out["b_single"] = (b["song_name"].astype(str).str.lower() == b["album_name"].astype(str).str.lower()).astype(float)
    out["b_art_vs_hist"] = np.log(n_art) - out["a_per_year"].where(n > 0, 0.0)
    # how many other artists of the batch feature this artist (guest demand this year)
    guest_counts = feats.explode().dropna().value_counts()
    out["b_guest_logn"] = np.log1p(b["artist_name"].map(guest_counts).fillna(0.0).astype(float))
    # featured artists of this track that are also primary artists in this batch
    batch_art = n_art.groupby(b["artist_name"]).first()
    out["b_feat_in_batch"] = feats.map(lambda fs: float(np.log1p(sum(batch_art.get(x, 0.0) for x in fs))))
    song = b["song_name"].astype(str).str.lower()
    album = b["album_name"].astype(str).str.lower()
    for name, pat in TITLE_WORDS.items():
        out[name] = song.str.contains(pat, regex=True).astype(float)
    for name, pat in ALBUM_WORDS.items():
        out[name] = album.str.contains(pat, regex=True).astype(float)
    out["t_dash"] = song.str.contains(" - ", regex=False).astype(float)
    out["t_paren"] = song.str.contains(r"[\(\[]", regex=True).astype(float)
    out["t_nonascii"] = _nonascii(b["song_name"])
    out["ar_nonascii"] = _nonascii(b["artist_name"])
    out["t_len"] = np.log1p(song.str.len())
    sbase = b["song_name"].map(base_title)
    abase = b["album_name"].map(base_title)
    out["b_title_track"] = np.array([float(x == y) for x, y in zip(sbase, abase)], dtype=float)
    out["b_song_in_album"] = np.array([float(x in y) for x, y in zip(sbase, album)], dtype=float)
    out["b_song_dups"] = np.log(sbase.groupby(sbase).transform("size").astype(float))
    out["b_song_dups_art"] = np.log(b.groupby([b["artist_name"], sbase])["artist_name"].transform("size").astype(float))
    # the same song title released in an earlier year (a remix, re-release or cover of an old hit)
    if len(history):
        hb = history["song_name"].map(base_title)
        hres = h["res"].groupby(hb.to_numpy()).agg(["sum", "count"])
        sj = hres.reindex(sbase)
        out["s_prev_logn"] = np.log1p(sj["count"].fillna(0.0).to_numpy())
        out["s_prev_shr"] = _shrunk(sj["sum"].fillna(0.0), sj["count"].fillna(0.0), shrink).to_numpy()
    else:
        out["s_prev_logn"] = 0.0
        out["s_prev_shr"] = 0.0
    return out.astype(np.float32)


def build_all(df: pd.DataFrame, years: range | list[int]) -> dict[int, pd.DataFrame]:
    """As-of features for each year: year Y's rows from years < Y only."""
    out = {}
    for y in years:
        hist = df[df["year"] < y]
        batch = df[df["year"] == y].drop(columns=[TARGET])
        out[y] = year_features(hist, batch, y)
    return out


def year_means(df: pd.DataFrame) -> pd.Series:
    return df.groupby("year")[TARGET].mean()


def trend_level(means: pd.Series, year: int, k: int = 4) -> float:
    """Linear fit through the last ``k`` yearly mean levels (all < year), extrapolated to ``year``."""
    past = means[means.index < year].sort_index().iloc[-k:]
    if len(past) < 2:
        return float(past.iloc[-1])
    slope, icpt = np.polyfit(past.index.to_numpy(float), past.to_numpy(float), 1)
    return float(icpt + slope * year)
