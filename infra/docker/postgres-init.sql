-- Run once by the postgres image on an empty data directory (POSTGRES_DB creates `mlflow`):
-- a second database for the Prefect server, owned by the same role.
CREATE DATABASE prefect;
