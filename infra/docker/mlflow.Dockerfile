# The MLflow tracking server image: the project's MLflow, boto3 and psycopg2-binary pins (constraints.txt).
# Build from the repository root: docker build -f infra/docker/mlflow.Dockerfile -t REGISTRY/art2mus-mlflow .
FROM python:3.11-slim-bookworm
COPY constraints.txt /tmp/constraints.txt
RUN pip install --no-cache-dir -c /tmp/constraints.txt mlflow boto3 psycopg2-binary \
    && useradd --create-home --uid 10002 mlflow
ENV MLFLOW_DISABLE_TELEMETRY=true
USER 10002
EXPOSE 5000
# Options come from the environment (MLFLOW_BACKEND_STORE_URI, MLFLOW_ARTIFACTS_DESTINATION) or the command.
ENTRYPOINT ["mlflow", "server"]
CMD ["--host", "0.0.0.0", "--port", "5000"]
