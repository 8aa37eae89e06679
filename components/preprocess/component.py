"""KFP adapter of the preprocess step (wrapped with dsl.component by the pipeline at compile time)."""

from kfp.dsl import Dataset, Input, Output


def preprocess_op(
    manifest: Input[Dataset],
    examples: Output[Dataset],
    image_size: int = 224,
    resize_mode: str = "squash",
    num_shards: int = 0,
    max_bad_fraction: float = 0.05,
    spark_backend: str = "local",
    spark_master: str = "local[*]",
    spark_options: dict = {},  # noqa: B006  (KFP needs a literal default; never mutated)
    jpeg_quality: int = 95,
) -> int:
    """Manifest (DESIGN §2) -> TFRecord `examples` (DESIGN §3) with Spark; returns the number of train examples.

    resize_mode: squash | center-crop | pad. num_shards: 0 = automatic (~150 MB per shard).
    spark_backend: local (SparkSession at spark_master) | dataproc | k8s; spark_options: see README.md.
    Remote backends read manifest.uri and write straight to examples.uri (both must be s3://).
    """
    from components.preprocess.core import preprocess

    remote = spark_backend != "local"
    schema = preprocess(
        manifest=manifest.uri if remote else manifest.path,
        output=examples.uri if remote else examples.path,
        image_size=image_size, resize_mode=resize_mode, num_shards=num_shards,
        max_bad_fraction=max_bad_fraction, backend=spark_backend, master=spark_master,
        options=dict(spark_options), jpeg_quality=jpeg_quality,
    )
    examples.metadata.update({
        "num_examples": schema["num_examples"],
        "image_size": schema["image_size"],
        "num_shards": schema["num_shards"],
        "bad_images": schema["bad_images"]["count"],
        "resize_mode": schema["resize_mode"],
        "classes": schema["classes"],
        "source_manifest_sha256": schema["source_manifest_sha256"],
    })
    return int(schema["num_examples"]["train"])
