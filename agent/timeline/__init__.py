"""The incident timeline: one endpoint's changes, signals and series on one time axis (docs/timeline.md)."""
