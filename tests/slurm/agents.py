"""The agents and the cluster the tests of this directory drive: a real agent whose jobs go to a real
single-node Slurm (tests/slurmproc.py), with Slurm's own memory enforcement without cgroups
(jobacct_gather/linux + OverMemoryKill, as a cluster without task/cgroup has it), a short MinJobAge (5 s) so
jobs leave squeue's list soon after they end, as they do after 300 s on a real cluster, and a partition that
oversubscribes its 2 cores (FORCE:16) so a few 1-CPU jobs run at once. The fixtures are in conftest.py."""

from __future__ import annotations

from pathlib import Path

from tests.agentproc import AgentProc, make_agent
from tests.slurmproc import SlurmCluster

SLURM_CONF = {
    "JobAcctGatherType": "jobacct_gather/linux",
    "JobAcctGatherFrequency": "1",
    "JobAcctGatherParams": "OverMemoryKill",
}


def agent_config(cluster: SlurmCluster, backend: str = "slurm", slurm_extra: str = "") -> str:
    return f"""
[jobs]
backend = "{backend}"
default_mem = "32M"

[jobs.slurm]
conf = "{cluster.conf}"
{slurm_extra}
poll_interval = 0.5
command_timeout = 40

[[quotas]]
pipeline = "train"
cpu = 2
mem = "1G"
near_limit = 0.5
partition = "{cluster.partition}"

[[quotas]]
pipeline = "here"
backend = "local"
"""


def start_agent(tmp: Path, cluster: SlurmCluster, name: str = "agent", slurm_extra: str = "") -> AgentProc:
    return make_agent(tmp, name=name, config=agent_config(cluster, slurm_extra=slurm_extra)).start(timeout=40)


def restart(old: AgentProc) -> AgentProc:
    """A new agent process on the same data dir, address and config."""
    new = AgentProc(name=old.name, data_dir=old.data_dir, port=old.port, socket_path=old.socket_path,
                    args=old.args, env=old.env)  # fmt: skip
    old.socket_path.unlink(missing_ok=True)
    return new.start(timeout=40)


def slurm_state(cluster: SlurmCluster, sid: int) -> str:
    return cluster.job_states().get(sid, "gone")


def forgotten(cluster: SlurmCluster, sid: int) -> bool:
    """Slurm no longer knows the job at all (squeue may stop listing it before scontrol forgets it)."""
    return cluster.run(["scontrol", "show", "job", "-o", str(sid)], check=False).returncode != 0


def new_cluster() -> SlurmCluster:
    """A (not yet started) cluster as these tests use it."""
    return SlurmCluster(min_job_age=5, extra_conf=SLURM_CONF, partition_options="OverSubscribe=FORCE:16")
