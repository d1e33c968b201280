"""The cache key follows content: each component changed alone misses; a renamed input with the same
bytes hits; shared preprocessing runs once; `--no-cache` and `cache = false` run again."""

from __future__ import annotations

from tests.pipelines.conftest import Harness, steps_by_name

STEPS = """
from pathlib import Path

HERE = Path(__file__).parent


def _count(name):
    with open(HERE / f"{name}.count", "a") as fh:
        fh.write("x\\n")


def prep(ctx):
    _count("prep")
    text = ctx.inputs["raw"].read_text()
    ctx.outputs["data"].write_text(text.upper() + "*" * ctx.params["scale"])
    ctx.log_metric("rows", len(text.splitlines()))


def train(ctx):
    _count("train-" + ctx.step)
    ctx.outputs["model"].write_text(ctx.inputs["data"].read_text()[::-1] + ctx.step)
    ctx.log_metric("auc", 0.5 + len(ctx.step) / 100)
    ctx.log_param("seed", 7)
"""

PIPE = """
name = "{name}"
[params]
scale = 1
[steps.prep]
call = "steps:prep"
isolation = "none"
params = ["scale"]
inputs = {{ raw = "file:{raw}" }}
outputs = ["data"]
[steps.train_a]
call = "steps:train"
isolation = "none"
inputs = {{ data = "prep.data" }}
outputs = ["model"]
[steps.train_b]
call = "steps:train"
isolation = "none"
inputs = {{ data = "prep.data" }}
outputs = ["model"]
"""


def _setup(h: Harness, raw: str = "raw.csv", name: str = "p") -> str:
    h.code("steps.py", STEPS)
    if not (h.root / "code" / raw).exists():
        h.code(raw, "a,b\n1,2\n3,4\n")
    return h.register(PIPE.format(name=name, raw=raw), f"{name}.toml")


def test_shared_preprocessing_runs_once_and_a_rerun_is_all_hits(harness: Harness) -> None:
    name = _setup(harness)
    r1 = harness.run(name)
    assert r1.state == "COMPLETED", r1
    s = steps_by_name(r1)
    assert harness.executions("prep") == 1  # two training steps read it; it ran once
    assert not any(x.cache_hit for x in r1.steps)
    assert s["train_a"].inputs["data"].digest == s["prep"].outputs["data"].digest == s["train_b"].inputs["data"].digest
    assert s["prep"].metrics == {"rows": 3.0} and s["train_a"].logged_params == {"seed": 7}
    assert s["prep"].inputs["raw"].digest.startswith("sha256:")
    r2 = harness.run(name)
    assert [x.cache_hit for x in r2.steps] == [True, True, True] and r2.cache_hits == 3
    assert harness.executions("prep") == 1 and harness.executions("train-train_a") == 1
    assert steps_by_name(r2)["train_a"].reused_from == r1.id
    assert steps_by_name(r2)["train_a"].outputs == s["train_a"].outputs
    # Another pipeline with the same preparation (same code, params, input bytes) reuses it too.
    other = _setup(harness, name="q")
    r3 = harness.run(other)
    assert steps_by_name(r3)["prep"].cache_hit and harness.executions("prep") == 1


def test_a_param_change_misses_only_where_it_is_read(harness: Harness) -> None:
    name = _setup(harness)
    harness.run(name)
    r = harness.run(name, params={"scale": 2})
    s = steps_by_name(r)
    assert not s["prep"].cache_hit and harness.executions("prep") == 2
    # prep's output changed, so the training steps' input digests changed: they run again too.
    assert not s["train_a"].cache_hit


def test_a_code_change_misses(harness: Harness) -> None:
    name = _setup(harness)
    harness.run(name)
    harness.code("steps.py", STEPS.replace('fh.write("x\\n")', 'fh.write("x" + "\\n")'))
    assert 'fh.write("x" + ' in (harness.root / "code" / "steps.py").read_text()
    r = harness.run(name)
    assert r.state == "COMPLETED" and not any(x.cache_hit for x in r.steps)
    assert harness.executions("prep") == 2


def test_a_code_change_elsewhere_in_the_module_keeps_other_steps_cached(harness: Harness) -> None:
    name = _setup(harness)
    harness.run(name)
    harness.code("steps.py", STEPS.replace("def train(ctx):\n    _count", "def train(ctx):\n    # tuned\n    _count"))
    r = harness.run(name)
    s = steps_by_name(r)
    assert s["prep"].cache_hit and not s["train_a"].cache_hit


def test_input_content_not_name_keys_the_cache(harness: Harness) -> None:
    name = _setup(harness)
    harness.run(name)
    # Same bytes under another name: a new pipeline version reading it still hits.
    (harness.root / "code" / "raw.csv").rename(harness.root / "code" / "renamed.csv")
    harness.register(PIPE.format(name=name, raw="renamed.csv"), "p.toml")
    r = harness.run(name)
    assert steps_by_name(r)["prep"].cache_hit and harness.executions("prep") == 1
    # Same name, new bytes: a miss (Kubeflow's stale-URI bug).
    (harness.root / "code" / "renamed.csv").write_text("a,b\n9,9\n")
    r = harness.run(name)
    assert not steps_by_name(r)["prep"].cache_hit and harness.executions("prep") == 2


def test_no_cache_and_cache_false_run_again(harness: Harness) -> None:
    name = _setup(harness)
    harness.run(name)
    r = harness.run(name, no_cache=True)
    assert not any(x.cache_hit for x in r.steps) and harness.executions("prep") == 2
    harness.register(
        PIPE.format(name=name, raw="raw.csv").replace('outputs = ["data"]', 'outputs = ["data"]\ncache = false'),
        "p.toml",
    )
    r = harness.run(name)
    s = steps_by_name(r)
    assert not s["prep"].cache_hit and harness.executions("prep") == 3
    assert s["train_a"].cache_hit  # same bytes out of prep: its dependants still hit


def test_two_runs_needing_the_same_preparation_at_once_run_it_once(harness: Harness) -> None:
    h = harness
    h.code(
        "steps.py", STEPS.replace('    _count("prep")\n', '    _count("prep")\n    import time\n    time.sleep(1)\n')
    )
    h.code("raw.csv", "a,b\n1,2\n")
    from agent.schemas.pipelines import RunRequest

    for name in ("p", "q"):
        h.register(PIPE.format(name=name, raw="raw.csv"), f"{name}.toml")
    a = h.svc.start_run("p", RunRequest(), "t")
    b = h.svc.start_run("q", RunRequest(), "t")
    ra, rb = h.wait(a.id), h.wait(b.id)
    assert ra.state == rb.state == "COMPLETED"
    assert h.executions("prep") == 1
    pa, pb = steps_by_name(ra)["prep"], steps_by_name(rb)["prep"]
    assert [pa.cache_hit, pb.cache_hit].count(True) == 1 and pa.outputs == pb.outputs
