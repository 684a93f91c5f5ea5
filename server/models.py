"""Request and response shapes of the sessions API, as pydantic models.

Requests are validated against these; responses are built as plain dicts and the models only describe
them in the OpenAPI document (so fields the spec omits, such as `processing_time_ms` on a fallback, are
left out rather than sent as null). Field names and units are the spec's; nothing here renames them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field
from pydantic.json_schema import SkipJsonSchema

from contract import vitals as contract_vitals
from contract.limits import MAX_AGE_YEARS, MIN_AGE_YEARS

# The response's vitals object: the table's vitals, then the overall confidence.
VITAL_KEYS: tuple[str, ...] = (*contract_vitals.VITAL_KEYS, "confidence")

SessionStatus = Literal["created", "uploading", "processing", "completed", "failed", "expired"]


def _whole_number(value: object) -> object:
    """JSON integers: 35 and 35.0 (JSON Schema counts both as integers), never "35", true or 35.5."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError("must be a whole number")
    return value


class Demographics(BaseModel):
    """Optional context that improves inference (each field optional)."""

    model_config = ConfigDict(extra="forbid")

    age: (
        Annotated[
            int,
            Field(ge=MIN_AGE_YEARS, le=MAX_AGE_YEARS, description="Age in years"),
            BeforeValidator(_whole_number),
        ]
        | None
    ) = None
    sex: Literal["M", "F", "X"] | None = None
    fitzpatrick: (
        Annotated[int, Field(ge=1, le=6, description="Fitzpatrick skin type"), BeforeValidator(_whole_number)]
        | None
    ) = None


class SessionStartRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    demographics: Demographics | None = None


class Range(BaseModel):
    min: float
    max: float


class FallbackConfig(BaseModel):
    """Ranges the server draws fallback vitals from when inference fails (documented in docs/api.md)."""

    heart_rate: Range
    hrv: Range
    respiratory_rate: Range
    spo2: Range
    systolic_bp: Range
    diastolic_bp_offset: Range = Field(description="Subtracted from systolic_bp to give diastolic_bp, mmHg")
    confidence: float


class SessionStartResponse(BaseModel):
    session_id: str = Field(description="Unique session identifier (UUID)")
    expires_at: int = Field(description="Unix timestamp (s) when the session expires")
    upload_url: str = Field(description="Presigned URL for one PUT of the tensor; expires with the session")
    fallback_config: FallbackConfig


class UploadCompleteRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    session_id: str = Field(min_length=1, max_length=128)


class Vitals(BaseModel):
    heart_rate: float = Field(description="beats per minute")
    respiratory_rate: float = Field(description="breaths per minute")
    hrv: float = Field(description="heart rate variability, ms")
    spo2: float = Field(description="oxygen saturation, %")
    systolic_bp: float = Field(description="mmHg")
    diastolic_bp: float = Field(description="mmHg")
    confidence: float = Field(ge=0.0, le=1.0, description="0..1; 0.0 means fallback vitals")


class UploadCompleteResponse(BaseModel):
    session_id: str
    status: Literal["completed"]
    vitals: Vitals
    processing_time_ms: float | SkipJsonSchema[None] = Field(
        default=None, description="Present only when inference succeeded"
    )
    quality: dict[str, Any] = Field(
        description="Inference detail (per-vital confidence and source) or, on fallback, "
        "{reason, message, fallback: true}"
    )


class SessionResultResponse(BaseModel):
    session_id: str
    status: SessionStatus
    vitals: Vitals | SkipJsonSchema[None] = Field(
        default=None, description="Present when completed or failed"
    )
    completed_at: int | SkipJsonSchema[None] = Field(default=None, description="Unix timestamp (s)")
    quality: dict[str, Any] | SkipJsonSchema[None] = None


class UploadReceipt(BaseModel):
    session_id: str
    status: Literal["uploading"] = Field(description="The upload is stored; call upload-complete next")
    received_bytes: int


class HealthResponse(BaseModel):
    status: Literal["ok"]
    version: str


class ErrorBody(BaseModel):
    """Every error, from any endpoint, has exactly this shape."""

    error: str = Field(description="Machine-readable code, e.g. SESSION_NOT_FOUND")
    message: str
    retryable: bool
