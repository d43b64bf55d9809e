"""The MLflow "models from code" entry point of the registered popularity model.

MLflow copies this file into every logged model and runs it when the model is loaded, instead of
unpickling a Python object; the weights and preprocessing travel as the model's artifacts. It is
not meant to be imported by anything else (running it registers the model object with MLflow).
"""

import mlflow

from driftwheel.registry import PopularityModel

mlflow.models.set_model(PopularityModel())
