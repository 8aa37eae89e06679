"""Ingest-from-S3 component (docs/DESIGN.md §1-2): the `manifest` artifact. Defaults and choices: params.py."""
