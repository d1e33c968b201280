"""Serving: the endpoints screen and its fallback switch, endpoint rows, and `watchkeeper loadtest`."""
