"""The embedded local stack: real SeaweedFS S3 and MLflow servers on 127.0.0.1 (`tlpipe stack`)."""

from tlpipe.stack.servers import DATA_BUCKET, MLFLOW_BUCKET, Stack, StackError

__all__ = ["DATA_BUCKET", "MLFLOW_BUCKET", "Stack", "StackError"]
