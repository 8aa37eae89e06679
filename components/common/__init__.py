"""What every component needs: settings from the environment, S3, MLflow and logging helpers."""
