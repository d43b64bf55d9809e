# The flywheel's image for every Airflow component and the MLflow server: the official Airflow
# image of the pinned version and Python, plus the project's requirements. dags/, include/ and
# plugins/ are mounted by docker-compose.yaml, not copied.
FROM apache/airflow:3.3.2-python3.11

# Install as the image's `airflow` user (UID 50000, into its home), never as root. Numeric, as the
# base image itself declares it, so a runtime can verify the user is not root (hadolint DL3066).
USER 50000
COPY --chown=50000:0 requirements.txt /requirements.txt
# apache-airflow==$AIRFLOW_VERSION (set by the base image) keeps pip from moving Airflow itself;
# the PyTorch CPU index supplies torch's +cpu build instead of several GB of CUDA wheels.
# The state and artifact folders exist in the image so new named volumes inherit the owner.
RUN pip install --no-cache-dir \
      --extra-index-url https://download.pytorch.org/whl/cpu \
      "apache-airflow==${AIRFLOW_VERSION}" \
      -r /requirements.txt \
 && mkdir -m 0775 /opt/airflow/state /opt/airflow/mlartifacts

# plugins/ holds driftwheel_airflow, which Airflow's processes import by name (the Celery preload).
ENV PYTHONPATH=/opt/airflow/include:/opt/airflow/plugins \
    FLYWHEEL_STATE_DIR=/opt/airflow/state \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
