"""Two processes promote at the same moment, 50 times, on PostgreSQL: one champion, never the worse.

MLflow's tracking store and registry are a database on the machine's PostgreSQL server, and the
promotion lock is an advisory lock there, as on the server stack. Each trial resets the champion to
v1, then two worker processes, each holding one challenger of the same period (one good, one far
worse, both gated against v1), are told to promote at the same instant through
``steps.promote_champion``. The review found both "promoted" and the worse model champion in 2 of 6
trials; with the door, the second promotion always finds the champion moved and is gated again.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import subprocess
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from tracks import land, make_tracks
from driftwheel import registry, steps
from driftwheel.config import Settings, StudyNetConfig
from driftwheel.replay import replay

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
TRIALS = 50

WORKER = """
import json, pickle, sys
from driftwheel import steps
settings = pickle.load(open(sys.argv[1], "rb"))
print("ready", flush=True)
for line in sys.stdin:
    run_id, version, gated_against = line.split()
    result = steps.promote_champion(settings, run_id, version, period=2012, gated_against=gated_against)
    print(json.dumps(result), flush=True)
"""


def test_concurrent_promotions_leave_one_champion_and_never_the_worse_model(
    settings: Settings, fresh_database: Callable[[str], str], tmp_path: Path
) -> None:
    uri = fresh_database("flywheel_race")
    flywheel = dataclasses.replace(settings, mlflow_tracking_uri=uri)
    assert flywheel.promotion_lock_uri == uri  # an advisory lock on the registry's server
    for year, level, seed in ((2010, 52, 1), (2011, 52, 0), (2012, 55, 3)):
        land(flywheel, year, make_tracks(year, n=500, level=level, seed=seed))
    replay(flywheel, [2010, 2011])
    steps.ingest_tracks(flywheel, 2012)
    steps.validate_tracks(flywheel, 2012)
    summary = steps.report_drift(flywheel, 2012)
    run_id, first = summary["mlflow_run_id"], summary["champion_version"]
    good = steps.retrain_model(flywheel, 2012, run_id, first)["version"]
    reckless = dataclasses.replace(
        flywheel.training, strategy="full", study_net=StudyNetConfig(epochs=1, learning_rate=1e-6)
    )
    bad = steps.retrain_model(dataclasses.replace(flywheel, training=reckless), 2012, run_id, None)["version"]

    client = registry.connect(uri)
    name = flywheel.model_name

    def copy(version: str) -> str:
        """A new version of the same model files and tags: a fresh challenger for a trial."""
        source = client.get_model_version(name, version)
        tags = {k: v for k, v in source.tags.items() if k != registry.T_STATUS}
        return str(client.create_model_version(name, source.source, run_id=run_id, tags=tags).version)

    pickled = tmp_path / "settings.pickle"
    pickled.write_bytes(pickle.dumps(flywheel))
    env = {**os.environ, "PYTHONPATH": f"{REPO / 'include'}:{REPO / 'tests'}"}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, str(pickled)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        assert [w.stdout.readline().strip() for w in workers] == ["ready", "ready"]
        winners_first: Counter[str] = Counter()
        for trial in range(TRIALS):
            # The world between trials: v1 is champion again.
            client.set_registered_model_alias(name, registry.CHAMPION, first)
            better, worse = copy(good), copy(bad)
            for worker, version in zip(workers, (worse, better) if trial % 2 else (better, worse)):
                worker.stdin.write(f"{run_id} {version} {first}\n")
            for worker in workers:
                worker.stdin.flush()
            results = [json.loads(w.stdout.readline()) for w in workers]

            champion = str(registry.champion(client, name).version)
            assert champion == better, f"trial {trial}: the worse model v{worse} is champion ({results})"
            statuses = {v: client.get_model_version(name, v).tags.get(registry.T_STATUS) for v in (better, worse)}
            # The worse one either lost its second gate, or won the lock first and was replaced.
            assert statuses[better] == "champion" and statuses[worse] in ("rejected", "retired"), f"trial {trial}"
            promoted_first = [r for r in results if r["promoted"] and r["previous_version"] == first]
            assert len(promoted_first) == 1, f"trial {trial}: both took the champion from v1: {results}"
            winners_first["worse" if promoted_first[0]["champion_version"] == worse else "better"] += 1
    finally:
        for worker in workers:
            worker.stdin.close()
            worker.wait(timeout=60)

    entries = [e for e in steps.history(flywheel) if e.period == 2012]
    # Every trial: one promotion from v1, one refusal (the champion had moved), then the loser's second gate.
    assert Counter(e.action for e in entries)["refused"] == TRIALS
    print(f"\n{TRIALS} trials; who took the lock first: {dict(winners_first)}")
