"""Smoke job of the tlpipe/spark image on a cluster: executors import the project and report its version.

Run by manifests/tlpipe/examples/spark-smoke.yaml (`manifests/quickstart.sh smoke`): it proves the Spark operator,
the driver service account's RBAC, the image's driver/executor entry point and Python on the executors.
"""

from importlib.metadata import version

from pyspark.sql import SparkSession


def project_version(_: int) -> str:
    import tlpipe.components  # noqa: F401  (fails the task if the project is not importable on the executor)

    return version("tlpipe")


if __name__ == "__main__":
    spark = SparkSession.builder.appName("tlpipe-spark-smoke").getOrCreate()
    versions = set(spark.sparkContext.parallelize(range(8), 4).map(project_version).collect())
    print(f"tlpipe {sorted(versions)} importable on every executor")
    spark.stop()
