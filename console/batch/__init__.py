"""Batch transform in the console: `watchkeeper batch run|status|resume|cancel`."""
