"""Built-in loggers: TensorBoard and MLflow, chosen with ``logger=tensorboard``, ``logger=mlflow``
or both (``logger=[tensorboard,mlflow]``). Each is a plugin of fmcore's lifecycle hooks."""
