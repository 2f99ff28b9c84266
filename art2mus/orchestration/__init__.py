"""What the retrain flow drives and reports: DVC as a subprocess (dvc_runner), the retry policy of its
tasks (retries), the steps its tasks call (steps), its own MLflow run (parent_run), its command line (console)
and what a retrain did (outcome). Prefect itself stays in flows/; nothing here imports it at module level."""
