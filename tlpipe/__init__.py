"""tlpipe: a KFP v2 transfer-learning image classifier pipeline.

Layout of the one installable namespace (pyproject's package-dir maps the repository folders into it):
`tlpipe.components` = components/ (one folder per step, `common` the shared contracts), `tlpipe.pipelines` =
pipelines/ (the pipeline definition), `tlpipe.cli` (every `tlpipe` command), `tlpipe.stack` (the embedded
S3 + MLflow servers), `tlpipe.tools` (tools that are not pipeline steps, e.g. the offline weights import).
"""
