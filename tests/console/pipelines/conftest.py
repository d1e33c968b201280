"""Real agents for the console's pipeline tests, and no job left behind (jobs outlive their agent)."""

from __future__ import annotations

from tests.console.jobs.conftest import _no_job_left  # noqa: F401 (autouse)
