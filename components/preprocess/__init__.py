"""Spark preprocessing: manifest -> `examples` artifact (DESIGN.md §3), on local Spark, Yandex Data Proc or k8s."""
