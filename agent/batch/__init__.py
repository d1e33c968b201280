"""Batch transform: score a dataset as a job of the `batch` pipeline (docs/batch.md)."""
