"""Fit the sample model's reference profile (drift baseline) and write it into both metadata files.

    .venv/bin/python sample_data/flights/make_profile.py

The profile is fitted by the agent's own code (agent/monitoring/fit.py, the same path as a registration
with `--reference`) from `reference.parquet`: the 20k-row sample of the training split with the model's
score (the prediction reference) and the true `delayed` label (the label reference). make_flights.py
calls this at its end; run it alone after a change to the profile format.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import polars as pl

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from agent.monitoring.fit import fit_for_signature, reference_frame  # noqa: E402
from agent.schemas import Signature  # noqa: E402

LABEL = "delayed"
METADATA = ("metadata.json", "metadata.torchscript.json")


def fit(reference: pl.DataFrame, signature: Signature) -> dict:
    """The profile JSON of the reference sample, with a note on where it came from."""
    frame = reference_frame(reference.rename({LABEL: "label"}), signature)
    body = fit_for_signature(frame, signature).to_json()
    body["about"] = (
        "Fitted by agent/monitoring/fit.py from reference.parquet (20k training rows, Jan-Apr 2013): "
        "features, the model's score as __prediction__, the true label as __label__."
    )
    return body


def main() -> None:
    reference = pl.read_parquet(HERE / "reference.parquet")
    for name in METADATA:
        path = HERE / name
        meta = json.loads(path.read_text())
        meta["profile"] = fit(reference, Signature.model_validate(meta["signature"]))
        path.write_text(json.dumps(meta, indent=2) + "\n")
        print(f"{name}: profile of {meta['profile']['rows']} rows, {len(meta['profile']['columns'])} columns")


if __name__ == "__main__":
    main()
