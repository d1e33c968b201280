"""The Slurm backend's groundwork (issue 16): reading what Slurm says about jobs, and saying it in our words.

`squeue.py` parses `squeue --json` (one call for all jobs; the schema differs between releases),
`scontrol show job -o` and jobcomp/filetxt records; `states.py` maps Slurm's states and reasons to
ours; `submit.py` builds the `sbatch` command line and batch script for a job (argv kept word by
word, env in the script, an rc file) and turns Slurm's refusals into our 4xx/503; `client.py` runs
Slurm's commands; `backend.py` is the backend the jobs service hands a Slurm pipeline's jobs to
(docs/jobs.md "Slurm backend").
"""
