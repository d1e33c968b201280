"""The Slurm backend's groundwork (issue 16): reading what Slurm says about jobs, and saying it in our words.

`squeue.py` parses `squeue --json` (one call for all jobs; the schema differs between releases),
`scontrol show job -o` and jobcomp/filetxt records; `states.py` maps Slurm's states and reasons to
ours. Nothing here runs Slurm or is wired into the agent yet.
"""
