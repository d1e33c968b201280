"""Monitoring: drift and alerts (client, rows, `watchkeeper alerts`, screens, tables, histogram)."""
