"""Prefect flows that orchestrate the pipeline (see README.md here)."""
