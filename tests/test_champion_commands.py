"""``python -m driftwheel history`` and ``rollback``, run as a user types them, on a real registry."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from mlflow.tracking import MlflowClient

from driftwheel import registry

REPO = Path(__file__).resolve().parents[1]


def _driftwheel(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "driftwheel", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )


def test_history_and_rollback_from_the_command_line(tmp_path: Path) -> None:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model("m")
    door = registry.Door((tmp_path / "locks").as_uri(), "driftwheel-ledger")
    for trained_through, gated_against in ((2014, None), (2015, "1")):
        version = client.create_model_version("m", "file:///x", tags={registry.T_TRAINED_THROUGH: str(trained_through)})
        registry.promote(
            client, "m", str(version.version), gated_against=gated_against, door=door, period=trained_through
        )
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO / "include"),
        "FLYWHEEL_MLFLOW_TRACKING_URI": uri,
        "FLYWHEEL_MODEL_NAME": "m",
        "FLYWHEEL_STATE_DIR": str(tmp_path),
    }

    rolled = _driftwheel("rollback", "--reason", "v2 misbehaves", env=env)
    assert rolled.returncode == 0, rolled.stderr
    assert "m: champion v2 -> v1 (v2 misbehaves)" in rolled.stdout
    assert str(registry.champion(client, "m").version) == "1"

    refused = _driftwheel("rollback", "--to", "7", "--reason", "no such version", env=env)
    assert refused.returncode == 1 and "rollback refused: m has no version 7" in refused.stdout

    history = _driftwheel("history", env=env)
    assert history.returncode == 0, history.stderr
    lines = [line for line in history.stdout.splitlines() if line.startswith("| 20")]
    assert [line.split(" | ")[1:5] for line in lines] == [
        ["promote", "2014", "-", "v1"],
        ["promote", "2015", "v1", "v2"],
        ["rollback", "-", "v2", "v1"],
    ]
