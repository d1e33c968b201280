"""Pipelines: DAGs of steps (jobs or in-process callables), content-keyed caching, tracked runs and
continuous-training triggers (docs/pipelines.md)."""
