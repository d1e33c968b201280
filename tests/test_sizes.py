"""A size means one thing everywhere: agent.toml, the API's request bodies and the CLI parse it alike."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from agent.config import AgentConfig
from agent.schemas.jobs import JobSubmit


@pytest.mark.parametrize(
    ("text", "nbytes"),
    [("4G", 4 * 2**30), ("4g", 4 * 2**30), ("512MiB", 512 * 2**20), ("2GB", 2 * 10**9), ("1.5GiB", 3 * 2**29)],
)
def test_config_and_api_read_a_size_alike(text: str, nbytes: int) -> None:
    cfg = AgentConfig.model_validate({"jobs": {"default_mem": text}})
    job = JobSubmit.model_validate({"pipeline": "p", "command": ["true"], "mem": text})
    assert cfg.jobs.default_mem == job.mem == nbytes


def test_a_bad_size_names_the_field() -> None:
    with pytest.raises(ValidationError) as e:
        JobSubmit.model_validate({"pipeline": "p", "command": ["true"], "mem": "4X"})
    assert e.value.errors()[0]["loc"] == ("mem",) and "not a size" in str(e.value)
