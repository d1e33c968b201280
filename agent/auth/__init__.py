"""Who is calling and what they may do, below the HTTP layer: roles, principals, API tokens.

The API (agent/api/auth.py, the gate and deps) and the features (rollouts' two-person rule, the
serving fast path's socket peers) both use these without importing anything HTTP.
"""
