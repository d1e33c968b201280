"""The incident timeline: one endpoint's changes, signals and series across the hosts serving it."""
