"""What the retrain flow drives and reports: DVC as a subprocess (dvc_runner), the retry policy of its
tasks (retries) and what a retrain did (outcome). Prefect itself stays in flows/; nothing here imports it
at module level."""
