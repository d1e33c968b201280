"""Widgets every feature builds on: the keyed table (cells updated in place by row key) and the sparkline."""
