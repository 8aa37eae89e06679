"""KFP adapter of the preprocess step (wrapped with dsl.component by the pipeline at compile time).

The defaults are literals (KFP embeds this function's source); a test checks them against params.py.
"""

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
    spark_image: str = "",
    experiment: str = "fish-classification",
) -> int:
    """Decode, convert to RGB and resize the manifest's images into TFRecord `examples` with Spark.

    Reads the manifest (docs/DESIGN.md §2) and writes the examples artifact (docs/DESIGN.md §3); remote
    backends read manifest.uri and write straight to examples.uri (both must be s3://).

    Args:
        manifest: the ingest manifest (manifest.parquet + classes.json).
        examples: the output: TFRecord shards per split and schema.json.
        image_size: side in pixels of the square output images.
        resize_mode: squash (stretch), center-crop or pad (letterbox).
        num_shards: shards in total, shared between the splits by size; 0 = automatic (~150 MB each).
        max_bad_fraction: fail when more than this fraction of the images cannot be decoded.
        spark_backend: local (a SparkSession in the step at spark_master), dataproc or k8s.
        spark_master: Spark master of the local backend, e.g. local[*].
        spark_options: backend options, {key: value} (keys: components/preprocess/README.md).
        jpeg_quality: JPEG quality (1..100) of the stored images.
        spark_image: image of the k8s backend's SparkApplication (the pipeline passes its `spark` image);
            spark_options `image` wins over it.
        experiment: MLflow experiment of the pipeline's parent run, which gets these parameters (when
            MLFLOW_TRACKING_URI is set).

    Returns:
        The number of train examples.
    """
    from tlpipe.components.preprocess.core import preprocess

    remote = spark_backend != "local"
    schema = preprocess(
        manifest=manifest.uri if remote else manifest.path,
        output=examples.uri if remote else examples.path,
        image_size=image_size, resize_mode=resize_mode, num_shards=num_shards,
        max_bad_fraction=max_bad_fraction, spark_backend=spark_backend, spark_master=spark_master,
        spark_options=dict(spark_options), jpeg_quality=jpeg_quality, spark_image=spark_image,
        experiment=experiment,
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
