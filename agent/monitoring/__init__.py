"""Drift and data-quality statistics for served models.

Pure computation, no I/O: `stats` holds the primitives on counts, `profile` fits a reference profile once per
model version, `window` keeps mergeable histograms of serving data over the profile's frozen bins, and `drift`
compares two histograms. numpy and polars are imported by the submodules, so import them lazily from the agent.
"""
