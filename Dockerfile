# The flywheel's Airflow image: the official Airflow image of the pinned version, Python 3.11,
# plus the project's requirements (CPU build of torch). dags/, include/ and plugins/ are mounted.
FROM apache/airflow:3.3.2-python3.11

COPY --chown=airflow:root requirements.txt /requirements.txt
# The CPU wheel index keeps torch from pulling several GB of CUDA libraries.
RUN pip install --no-cache-dir \
      --extra-index-url https://download.pytorch.org/whl/cpu \
      -r /requirements.txt

ENV PYTHONPATH=/opt/airflow/include \
    FLYWHEEL_STATE_DIR=/opt/airflow/state \
    MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR=false
