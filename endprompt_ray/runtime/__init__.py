"""The job's runtime services: joining Ray, MLflow tracking."""
