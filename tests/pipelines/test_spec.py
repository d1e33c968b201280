"""Pipeline files refused at registration with the step and field named."""

from __future__ import annotations

import pytest

from agent.pipelines.spec import SpecError, check_run_params, parse_pipeline


def _parse(toml: str, path: str | None = None):
    return parse_pipeline(toml, path, "t")


def _err(toml: str) -> SpecError:
    with pytest.raises(SpecError) as e:
        _parse(toml)
    return e.value


OK = """
name = "p"
[params]
epochs = 2
[steps.prep]
call = "m:prep"
isolation = "none"
outputs = ["data"]
[steps.train]
command = ["python3", "train.py", "--epochs", "{params.epochs}", "{inputs.data}", "{outputs.model}"]
params = ["epochs"]
inputs = { data = "prep.data" }
outputs = ["model"]
"""


def test_a_good_file_is_read_with_its_dag_and_version() -> None:
    spec = _parse(OK)
    assert [s.name for s in spec.steps] == ["prep", "train"]
    assert spec.steps[1].depends_on == ["prep"] and spec.steps[0].isolation == "none"
    assert spec.version.startswith("sha256:") and spec.version != _parse(OK + "\n# x\n").version


def test_a_cycle_is_refused_naming_it() -> None:
    e = _err("""
name = "p"
[steps.a]
call = "m:a"
inputs = { x = "c.out" }
outputs = ["out"]
[steps.b]
call = "m:b"
inputs = { x = "a.out" }
outputs = ["out"]
[steps.c]
call = "m:c"
inputs = { x = "b.out" }
outputs = ["out"]
""")
    assert "cycle" in e.detail and "a -> " in e.detail and e.field and e.field.startswith("steps.")


def test_a_missing_input_names_the_step_and_input() -> None:
    e = _err(OK.replace('data = "prep.data"', 'data = "prep.nothing"'))
    assert e.field == "steps.train.inputs.data" and "no output 'nothing'" in e.detail
    e = _err(OK.replace('data = "prep.data"', 'data = "ghost.data"'))
    assert e.field == "steps.train.inputs.data" and "no step 'ghost'" in e.detail


def test_a_missing_input_file_is_refused(tmp_path) -> None:
    (tmp_path / "p.toml").write_text("")
    toml = OK.replace('data = "prep.data"', 'data = "file:nope.csv"')
    with pytest.raises(SpecError) as e:
        _parse(toml, str(tmp_path / "p.toml"))
    assert e.value.field == "steps.train.inputs.data"


def test_unknown_parameters_are_refused_where_they_are_named() -> None:
    e = _err(OK.replace('params = ["epochs"]', 'params = ["epochz"]'))
    assert e.field == "steps.train.params" and "epochz" in e.detail
    e = _err(OK.replace("{params.epochs}", "{params.lr}"))
    assert e.field == "steps.train.command" and "'lr'" in e.detail
    spec = _parse(OK)
    with pytest.raises(SpecError) as e2:
        check_run_params(spec, {"lr": 0.1})
    assert e2.value.field == "params.lr"
    with pytest.raises(SpecError) as e3:
        check_run_params(spec, {"epochs": "many"})
    assert e3.value.field == "params.epochs"
    assert check_run_params(spec, {"epochs": 5}) == {"epochs": 5}


def test_unknown_keys_and_bad_steps_are_refused() -> None:
    assert _err(OK.replace('isolation = "none"', 'isolaton = "none"')).field == "steps.prep.isolaton"
    assert _err(OK.replace('call = "m:prep"', 'call = "m.prep"')).field == "steps.prep.call"
    e = _err(OK.replace('call = "m:prep"\nisolation = "none"', 'command = ["x"]\nisolation = "none"'))
    assert e.field == "steps.prep.isolation"
    assert _err('name = "p"\n[steps.a]\ncall = "m:a"\n[[triggers]]\nkind = "cron"\ncron = "every day"\n').field == (
        "triggers.0.cron"
    )
    assert _err('name = "p"\nsteps = 3').field == "steps"
    assert _err("not toml [").field == "content"
