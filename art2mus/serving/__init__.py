"""Serving: the registered model as an MLflow pyfunc (image bytes in, WAV out)."""
