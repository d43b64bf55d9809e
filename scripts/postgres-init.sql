-- MLflow's tracking store and registry live next to Airflow's metadata, in their own database.
CREATE DATABASE mlflow OWNER airflow;
