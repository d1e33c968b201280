"""How a job's process tree is started, limited, measured, stopped and re-adopted, per host tier.

`base.py` holds the contract every tier keeps; one module per tier (systemd, cgroup v2, cgroup v1,
psutil). `select_tier` picks the best one the host offers (see `agent/telemetry/enforcement.py`).
"""
