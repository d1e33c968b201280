"""The model registry: immutable versions with lineage and signatures, artifacts on disk, alias moves as events."""
