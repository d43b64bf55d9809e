"""The champion's door on a real MLflow registry (SQLite): compare-and-set, order, ledger, rollback.

Versions here carry tags only (no model files): the door never loads a model.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from driftwheel import ledger, registry

NAME = "door_test"


@pytest.fixture
def client(tmp_path: Path) -> MlflowClient:
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    client.create_registered_model(NAME)
    return client


@pytest.fixture
def door(tmp_path: Path) -> registry.Door:
    return registry.Door((tmp_path / "locks").as_uri(), "door-ledger")


def register(client: MlflowClient, trained_through: int, **tags: str) -> str:
    version = client.create_model_version(
        NAME, "file:///nowhere", tags={registry.T_TRAINED_THROUGH: str(trained_through), **tags}
    )
    return str(version.version)


def test_promotion_compares_and_sets_against_the_gated_champion(client: MlflowClient, door: registry.Door) -> None:
    first = register(client, 2014)
    assert registry.promote(client, NAME, first, gated_against=None, door=door, period=2014).promoted
    good, bad = register(client, 2015), register(client, 2015)
    assert registry.promote(client, NAME, good, gated_against=first, door=door, period=2015).promoted
    # The second racer was gated against v1 too; the champion has moved under it.
    late = registry.promote(client, NAME, bad, gated_against=first, door=door, period=2015)
    assert not late.promoted and late.moved_to == good and "the champion moved" in late.reason
    assert str(registry.champion(client, NAME).version) == good
    statuses = {v.version: v.tags.get(registry.T_STATUS) for v in client.search_model_versions(f"name='{NAME}'")}
    assert list(statuses.values()).count("champion") == 1
    actions = [(e.action, e.from_version, e.to_version) for e in ledger.entries(client, door.ledger_experiment)]
    assert actions == [("promote", None, first), ("promote", first, good), ("refused", good, bad)]


def test_an_older_challenger_never_replaces_a_newer_champion(client: MlflowClient, door: registry.Door) -> None:
    # The finding: a manual run for 2030 promoted, then locked every later year out; the reverse
    # (a rerun of 2015 after 2019 promoted) must not roll production back either.
    newest = register(client, 2019)
    registry.promote(client, NAME, newest, gated_against=None, door=door)
    old = register(client, 2015)
    refused = registry.promote(client, NAME, old, gated_against=newest, door=door, period=2015)
    assert not refused.promoted and "trained through 2019" in refused.reason and refused.moved_to is None


def test_a_rerun_after_a_data_fix_is_sent_back_to_the_gate_against_what_the_period_promoted(
    client: MlflowClient, door: registry.Door
) -> None:
    before = register(client, 2014)
    registry.promote(client, NAME, before, gated_against=None, door=door, period=2014)
    broken = register(client, 2015)
    registry.promote(client, NAME, broken, gated_against=before, door=door, period=2015)
    # 2015 rerun: its challenger was gated against the model in production when 2015 arrived.
    fixed = register(client, 2015)
    refused = registry.promote(client, NAME, fixed, gated_against=before, door=door, period=2015)
    assert not refused.promoted and refused.moved_to == broken  # steps.promote_champion gates it again
    assert registry.promote(client, NAME, fixed, gated_against=broken, door=door, period=2015).promoted


def test_rollback_restores_a_former_champion_through_the_door(client: MlflowClient, door: registry.Door) -> None:
    first = register(client, 2014)
    registry.promote(client, NAME, first, gated_against=None, door=door)
    second = register(client, 2015)
    registry.promote(client, NAME, second, gated_against=first, door=door)
    rejected = register(client, 2016)
    registry.reject(client, NAME, rejected, "worse than the baseline", door=door, period=2016, champion_version=second)

    with pytest.raises(ValueError, match="never champion"):
        registry.rollback(client, NAME, reason="try the rejected one", door=door, to_version=rejected)
    restored = registry.rollback(client, NAME, reason="v2 misbehaves in production", door=door)
    assert restored.champion_version == first and str(registry.champion(client, NAME).version) == first
    assert client.get_model_version(NAME, second).tags[registry.T_STATUS] == "rolled back"
    # And forward again, explicitly.
    registry.rollback(client, NAME, reason="v2 was fine after all", door=door, to_version=second)
    assert str(registry.champion(client, NAME).version) == second

    entries = ledger.entries(client, door.ledger_experiment, NAME)
    assert [e.action for e in entries] == ["promote", "promote", "reject", "rollback", "rollback"]
    assert entries[3].reason == "v2 misbehaves in production" and entries[3].time is not None
    assert "| rollback | - | v2 | v1 | v2 misbehaves in production |" in ledger.format_entries(entries)


def test_a_lock_held_elsewhere_makes_the_promotion_wait(tmp_path: Path) -> None:
    from driftwheel import locks

    uri = (tmp_path / "locks").as_uri()
    with locks.promotion_lock(uri, NAME), pytest.raises(locks.LockTimeout):
        with locks.promotion_lock(uri, NAME, timeout=0.3):
            pass
    with locks.promotion_lock(uri, NAME, timeout=0.3):  # released: free again
        pass
