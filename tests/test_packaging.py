"""Static checks of the deployment files (there is no Docker engine to build them here)."""

import re
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]


def _pinned_airflow() -> str:
    match = re.search(r"^apache-airflow==([\d.]+)", (REPO / "requirements.txt").read_text(), re.M)
    assert match, "requirements.txt must pin apache-airflow"
    return match.group(1)


def test_dockerfile_uses_the_pinned_airflow_and_python() -> None:
    base = re.search(r"^FROM (\S+)", (REPO / "Dockerfile").read_text(), re.M).group(1)
    assert base == f"apache/airflow:{_pinned_airflow()}-python3.11"


def test_compose_services_and_secrets() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yaml").read_text())
    services = compose["services"]
    assert {"postgres", "mlflow", "airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor"} <= set(services)
    text = (REPO / "docker-compose.yaml").read_text()
    assert "${POSTGRES_PASSWORD}" in text and "password:" not in text.lower().replace("postgres_password:", "")
    example = (REPO / ".env.example").read_text()
    assert {"POSTGRES_PASSWORD", "AIRFLOW_JWT_SECRET"} <= {line.split("=")[0] for line in example.splitlines() if "=" in line}
    for name in ("airflow-apiserver", "airflow-scheduler"):
        assert services[name]["depends_on"]["airflow-init"]["condition"] == "service_completed_successfully"
