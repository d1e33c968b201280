"""One real single-node Slurm (tests/slurmproc.py) shared by the tests of this directory."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.slurmproc import SlurmCluster, unavailable_reason


@pytest.fixture(scope="session")
def slurm() -> Iterator[SlurmCluster]:
    """A running cluster (about a second to start); skipped only where Slurm/munge are missing or we aren't root."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    cluster = SlurmCluster().start()
    try:
        yield cluster
    finally:
        cluster.stop()
