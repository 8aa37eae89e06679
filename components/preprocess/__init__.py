"""Spark preprocessing: manifest -> `examples` (docs/DESIGN.md §3) on local Spark, Data Proc or k8s."""
