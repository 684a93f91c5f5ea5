"""Small typed views of the sessions API's requests and responses.

Parsing is strict about what the workflow needs (a session id, an upload URL) and lenient about the rest,
so that a server adding fields never breaks old clients while a broken body still fails with a clear
`UnexpectedResponse` instead of a KeyError deep in a caller. `raw` keeps the full JSON for anything else.
"""

from __future__ import annotations

import math
import random
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import httpx

from contract.limits import FITZPATRICK_TYPES, MAX_AGE_YEARS, MIN_AGE_YEARS, SEXES, age_is_valid
from contract.vitals import draw_fallback
from transport.errors import UnexpectedResponse, request_id_of

Sex = Literal["M", "F", "X"]
SessionStatus = Literal["created", "uploading", "processing", "completed", "failed", "expired"]
TERMINAL_STATUSES: frozenset[str] = frozenset({"completed", "failed", "expired"})


@dataclass(frozen=True, slots=True)
class Demographics:
    """Optional subject details that improve accuracy; validated here so a typo fails before any upload."""

    age: int | None = None
    sex: Sex | None = None
    fitzpatrick: int | None = None

    def __post_init__(self) -> None:
        if self.age is not None and not age_is_valid(self.age):
            raise ValueError(f"age must be an integer in {MIN_AGE_YEARS}..{MAX_AGE_YEARS}, got {self.age!r}")
        if self.sex is not None and self.sex not in SEXES:
            raise ValueError(f"sex must be 'M', 'F' or 'X', got {self.sex!r}")
        if self.fitzpatrick is not None and self.fitzpatrick not in FITZPATRICK_TYPES:
            raise ValueError(f"fitzpatrick must be 1..6, got {self.fitzpatrick!r}")

    def to_json(self) -> dict[str, Any]:
        """The spec's `demographics` object, leaving out unknown fields rather than sending nulls."""
        return {
            k: v
            for k, v in (("age", self.age), ("sex", self.sex), ("fitzpatrick", self.fitzpatrick))
            if v is not None
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> Demographics | None:
        if not data:
            return None
        return cls(age=data.get("age"), sex=data.get("sex"), fitzpatrick=data.get("fitzpatrick"))


@dataclass(frozen=True, slots=True)
class RateLimit:
    """The hourly request budget from `X-RateLimit-*`; `reset` is a Unix timestamp."""

    limit: int
    remaining: int
    reset: int

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> RateLimit | None:
        values = _int_headers(headers, "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")
        return cls(*values) if values else None


@dataclass(frozen=True, slots=True)
class Usage:
    """The monthly scan quota from `X-Usage-*`."""

    current: int
    limit: int
    remaining: int

    @classmethod
    def from_headers(cls, headers: httpx.Headers) -> Usage | None:
        values = _int_headers(headers, "x-usage-current", "x-usage-limit", "x-usage-remaining")
        return cls(*values) if values else None


_DECIMAL = re.compile(r"[+-]?[0-9]{1,18}")


def _int_headers(headers: httpx.Headers, *names: str) -> tuple[int, ...] | None:
    """All named headers as integers, or None when any is missing or not a sane number (inf, 1e999, nan)."""
    values = []
    for name in names:
        value = _header_int(headers.get(name))
        if value is None:
            return None
        values.append(value)
    return tuple(values)


def _header_int(text: str | None) -> int | None:
    if text is None:
        return None
    text = text.strip()
    if _DECIMAL.fullmatch(text):
        return int(text)
    number = _finite(_float_or_none(text))
    return int(number) if number is not None and abs(number) < 1e18 else None


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


@dataclass(frozen=True, slots=True)
class Vitals:
    """The spec's `vitals` object: bpm, breaths/min, ms (HRV), % (SpO2), mmHg, and confidence 0..1.

    Any vital may be None when the server could not estimate it. `confidence == 0.0` marks fallback values
    drawn from population ranges, not a measurement.
    """

    heart_rate: float | None = None
    respiratory_rate: float | None = None
    hrv: float | None = None
    spo2: float | None = None
    systolic_bp: float | None = None
    diastolic_bp: float | None = None
    confidence: float = 0.0

    @property
    def is_fallback(self) -> bool:
        return self.confidence == 0.0

    @classmethod
    def from_json(cls, data: Any) -> Vitals | None:
        if not isinstance(data, Mapping):
            return None

        def num(key: str) -> float | None:
            value = data.get(key)
            return value if _finite(value) is not None else None

        return cls(
            heart_rate=num("heart_rate"),
            respiratory_rate=num("respiratory_rate"),
            hrv=num("hrv"),
            spo2=num("spo2"),
            systolic_bp=num("systolic_bp"),
            diastolic_bp=num("diastolic_bp"),
            confidence=float(num("confidence") or 0.0),
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "heart_rate": self.heart_rate,
            "respiratory_rate": self.respiratory_rate,
            "hrv": self.hrv,
            "spo2": self.spo2,
            "systolic_bp": self.systolic_bp,
            "diastolic_bp": self.diastolic_bp,
            "confidence": self.confidence,
        }


@dataclass(frozen=True, slots=True)
class Range:
    """An inclusive min..max range of the fallback config."""

    min: float
    max: float


@dataclass(frozen=True, slots=True)
class FallbackConfig:
    """Ranges the server hands out for generating fallback vitals when inference cannot run.

    The client never uses these on its own: `draw()` is an explicit opt-in for apps that must show
    *something* offline, and what it returns is marked as fallback (confidence 0.0) so it can never pass
    for a measurement.
    """

    ranges: dict[str, Range] = field(default_factory=dict)
    confidence: float = 0.0

    @classmethod
    def from_json(cls, data: Any) -> FallbackConfig:
        ranges: dict[str, Range] = {}
        confidence = 0.0
        if isinstance(data, Mapping):
            for key, value in data.items():
                if not isinstance(value, Mapping):
                    continue
                low, high = _finite(value.get("min")), _finite(value.get("max"))
                if low is not None and high is not None:
                    ranges[str(key)] = Range(low, high)
            confidence = _finite(data.get("confidence")) or 0.0
        return cls(ranges=ranges, confidence=confidence)

    def draw(self, rng: random.Random | None = None) -> Vitals:
        """Fallback vitals drawn uniformly from the ranges; diastolic = systolic - diastolic_bp_offset.

        Confidence is forced to 0.0 whatever the config says, so `is_fallback` always holds.
        """
        drawn = draw_fallback({k: (r.min, r.max) for k, r in self.ranges.items()}, rng or random.Random())
        return Vitals(**drawn, confidence=0.0)


def _finite(value: object) -> float | None:
    """`value` as a finite float, or None: not a number, a bool, nan/inf, or an int too large for a float."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


@dataclass(frozen=True, slots=True)
class StartedSession:
    """A session from POST /sdk/session/start: where to upload and until when (`expires_at`, Unix time)."""

    session_id: str
    expires_at: float | None
    upload_url: str
    fallback_config: FallbackConfig
    rate_limit: RateLimit | None = None
    usage: Usage | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_response(cls, response: httpx.Response, body: Any) -> StartedSession:
        if not isinstance(body, dict):
            raise _bad(response, "session start", "not a JSON object")
        session_id, upload_url = body.get("session_id"), body.get("upload_url")
        if not isinstance(session_id, str) or not session_id:
            raise _bad(response, "session start", "missing session_id")
        if not isinstance(upload_url, str) or not upload_url:
            raise _bad(response, "session start", "missing upload_url")
        if not _usable_url(upload_url):
            raise _bad(response, "session start", "an upload_url that is not an http(s) URL")
        return cls(
            session_id=session_id,
            expires_at=_finite(body.get("expires_at")),
            upload_url=upload_url,
            fallback_config=FallbackConfig.from_json(body.get("fallback_config")),
            rate_limit=RateLimit.from_headers(response.headers),
            usage=Usage.from_headers(response.headers),
            raw=body,
        )


def _usable_url(url: str) -> bool:
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError):
        return False
    return parsed.scheme in ("http", "https") and bool(parsed.host)


@dataclass(frozen=True, slots=True)
class Result:
    """A session's outcome, from upload-complete or from polling GET /sdk/session/result/{id}.

    `status` is one of the spec's statuses; `vitals` is present when completed (and maybe when failed).
    `quality` is the reference server's extra per-vital detail (None from servers that do not send it).
    Check `is_fallback` before showing numbers: fallback vitals are population ranges, not a measurement.
    """

    session_id: str
    status: str
    vitals: Vitals | None = None
    processing_time_ms: float | None = None
    completed_at: float | None = None
    quality: dict[str, Any] | None = None
    rate_limit: RateLimit | None = None
    usage: Usage | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def is_fallback(self) -> bool:
        """True when the vitals are fallback values (confidence 0.0) or there are none at all."""
        return self.vitals is None or self.vitals.is_fallback

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @classmethod
    def from_json(
        cls, body: Any, *, rate_limit: RateLimit | None = None, usage: Usage | None = None
    ) -> Result:
        """Build from a JSON body (also used to reload saved results); raises ValueError when malformed."""
        if not isinstance(body, dict):
            raise ValueError("not a JSON object")
        session_id, status = body.get("session_id"), body.get("status")
        if not isinstance(session_id, str) or not isinstance(status, str):
            raise ValueError("missing session_id or status")
        quality = body.get("quality")
        return cls(
            session_id=session_id,
            status=status,
            vitals=Vitals.from_json(body.get("vitals")),
            processing_time_ms=_finite(body.get("processing_time_ms")),
            completed_at=_finite(body.get("completed_at")),
            quality=quality if isinstance(quality, dict) else None,
            rate_limit=rate_limit,
            usage=usage,
            raw=body,
        )

    @classmethod
    def from_response(
        cls, response: httpx.Response, body: Any, what: str, session_id: str | None = None
    ) -> Result:
        """The result in a response; with `session_id`, it must be that session's (not another's)."""
        try:
            result = cls.from_json(
                body,
                rate_limit=RateLimit.from_headers(response.headers),
                usage=Usage.from_headers(response.headers),
            )
        except ValueError as exc:
            raise _bad(response, what, str(exc)) from None
        if result.status == "completed" and result.vitals is None:
            raise _bad(response, what, "status completed without a vitals object")
        if session_id is not None and result.session_id != session_id:
            raise _bad(
                response,
                what,
                f"the result of another session ({result.session_id[:64]!r}, not {session_id!r})",
            )
        return result


def _bad(response: httpx.Response, what: str, problem: str) -> UnexpectedResponse:
    return UnexpectedResponse(
        f"{what}: {problem} in the HTTP {response.status_code} body from "
        f"{response.request.method} {response.request.url.copy_with(query=None)}",
        status=response.status_code,
        request_id=request_id_of(response),
    )


__all__ = [
    "TERMINAL_STATUSES",
    "Demographics",
    "FallbackConfig",
    "Range",
    "RateLimit",
    "Result",
    "SessionStatus",
    "Sex",
    "StartedSession",
    "Usage",
    "Vitals",
]
