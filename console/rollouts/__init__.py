"""Rollouts: client and poller, rows, `watchkeeper deploy|rollouts|approve|...`, the rollouts screen."""
