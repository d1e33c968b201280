"""The model registry on the wire: versions, signatures, lineage, aliases, and registered datasets."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from agent.schemas.common import STRICT_INPUT, WholeInt, _Wire

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"
ModelFormat = Literal["onnx", "torchscript", "torch_export"]
FeatureDtype = Literal["float", "int", "bool", "category"]


class FeatureSpec(_Wire):
    """One input feature of a model's signature.

    Numeric features go to the model as-is (normalisation belongs in the model). A `category`
    feature is one-hot encoded by the server in the order of `categories`; a value outside them is
    "unseen": it encodes as all zeros and is counted (data quality), never an error.
    """

    model_config = STRICT_INPUT
    name: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
    dtype: FeatureDtype
    min: float | None = None  # allowed range, inclusive; outside is counted, not rejected
    max: float | None = None
    categories: list[str] | None = None  # required for dtype "category"
    # Used for a missing value when the endpoint's missing_policy is "impute" (e.g. the training median).
    impute: float | str | None = None


class OutputSpec(_Wire):
    model_config = STRICT_INPUT
    kind: Literal["binary", "regression", "multiclass"]
    labels: list[str] | None = None  # binary: [negative, positive]; multiclass: one per class
    threshold: float = 0.5  # binary: score >= threshold -> labels[1]


class Signature(_Wire):
    model_config = STRICT_INPUT
    features: list[FeatureSpec] = Field(min_length=1)
    output: OutputSpec


class Lineage(_Wire):
    """Where a model version came from; the first three are required on every build."""

    model_config = STRICT_INPUT
    build_id: str = Field(min_length=1, max_length=200)
    code_commit: str = Field(min_length=1, max_length=200)
    code_dirty: bool = False
    data_version: str = Field(min_length=1, max_length=200)  # a version name or a content digest
    params_hash: str | None = None
    parent_version: WholeInt | None = None
    job_id: str | None = None


class ModelVersionCreate(_Wire):
    """Metadata sent with an artifact (multipart field `metadata`, JSON) to register a version."""

    model_config = STRICT_INPUT
    format: ModelFormat
    lineage: Lineage
    signature: Signature
    description: str = ""
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    # Reference data profile (drift issue): opaque JSON here, validated by agent/monitoring.
    profile: dict | None = None


class ModelVersion(_Wire):
    name: str
    version: int
    digest: str  # sha256 of the artifact bytes
    size_bytes: int
    format: ModelFormat
    created_at: float
    created_by: str
    description: str = ""
    lineage: Lineage
    signature: Signature
    tags: dict[str, str] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    has_profile: bool = False
    aliases: list[str] = Field(default_factory=list)


class ModelSummary(_Wire):
    name: str
    latest_version: int
    versions: int
    aliases: dict[str, int] = Field(default_factory=dict)
    updated_at: float


class AliasMove(_Wire):
    model_config = STRICT_INPUT
    version: WholeInt = Field(ge=1)
    reason: str = Field(default="", max_length=500)


class AliasEvent(_Wire):
    ts: float
    model: str
    alias: str
    from_version: int | None
    to_version: int
    principal: str
    reason: str = ""


class DatasetInfo(_Wire):
    """A registered, immutable dataset (Parquet) used as a validation set: name, version, digest."""

    name: str
    version: int
    digest: str
    rows: int
    columns: list[str]
    size_bytes: int
    created_at: float
    created_by: str
