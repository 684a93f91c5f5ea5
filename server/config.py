"""Server configuration: one frozen dataclass, read from the environment once at start-up.

Every knob has an environment variable so that `vitalcam serve` in a container needs no flags; keyword
overrides win over the environment so tests and the embedded server can pin values without touching
`os.environ` (which is process-wide and shared with other threads).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

ENV_DATA_DIR = "VITALCAM_DATA_DIR"
ENV_PERSIST_VITALS = "PERSIST_VITALS"

# Field name -> environment variable. PERSIST_VITALS keeps the spec's unprefixed name.
ENV_VARS: dict[str, str] = {
    "data_dir": ENV_DATA_DIR,
    "persist_vitals": ENV_PERSIST_VITALS,
    "rate_limit_per_hour": "VITALCAM_RATE_LIMIT_PER_HOUR",
    "monthly_quota": "VITALCAM_MONTHLY_QUOTA",
    "session_ttl_s": "VITALCAM_SESSION_TTL_S",
    "max_upload_bytes": "VITALCAM_MAX_UPLOAD_BYTES",
    "public_base_url": "VITALCAM_PUBLIC_BASE_URL",
    "inference_workers": "VITALCAM_INFERENCE_WORKERS",
    "sweep_interval_s": "VITALCAM_SWEEP_INTERVAL_S",
    "expired_retention_s": "VITALCAM_EXPIRED_RETENTION_S",
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def default_data_dir() -> Path:
    """Where `vitalcam serve` and `vitalcam keys` keep their database unless told otherwise.

    `VITALCAM_DATA_DIR` wins; otherwise the XDG data directory, so keys created by `vitalcam keys create`
    are the ones `vitalcam serve` accepts without either command needing a flag.
    """
    explicit = os.environ.get(ENV_DATA_DIR)
    if explicit:
        return Path(explicit).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share"
    return base / "vitalcam" / "server"


@dataclass(frozen=True, slots=True)
class ServerConfig:
    """Everything the reference backend needs to know; defaults are the spec's."""

    data_dir: Path = field(default_factory=default_data_dir)
    persist_vitals: bool = False
    rate_limit_per_hour: int = 300
    monthly_quota: int = 500
    session_ttl_s: int = 1800
    max_upload_bytes: int = 64 * 1024 * 1024
    # Base of the presigned upload URLs; None means "the URL this request came in on".
    public_base_url: str | None = None
    inference_workers: int = 2
    sweep_interval_s: float = 30.0
    # How long an expired session's tombstone (status only, no data) answers GET result before removal.
    expired_retention_s: int = 86400

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if self.public_base_url is not None:
            object.__setattr__(self, "public_base_url", self.public_base_url.rstrip("/") or None)
        for name in ("rate_limit_per_hour", "monthly_quota", "session_ttl_s", "max_upload_bytes"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.inference_workers < 1:
            raise ValueError(f"inference_workers must be >= 1, got {self.inference_workers}")
        if self.sweep_interval_s <= 0:
            raise ValueError(f"sweep_interval_s must be > 0, got {self.sweep_interval_s}")

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: Any) -> ServerConfig:
        """Defaults, then the environment (see ENV_VARS), then `overrides` (None values are ignored)."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        types = {f.name: f.type for f in fields(cls)}
        for name, var in ENV_VARS.items():
            raw = env.get(var)
            if raw is None or (raw.strip() == "" and name != "persist_vitals"):
                continue
            values[name] = _parse(var, types[name], raw.strip())
        unknown = set(overrides) - set(types)
        if unknown:
            raise TypeError(f"unknown ServerConfig fields: {', '.join(sorted(unknown))}")
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)

    def with_overrides(self, **overrides: Any) -> ServerConfig:
        return replace(self, **overrides)


def _parse(var: str, type_name: object, raw: str) -> Any:
    type_text = str(type_name)
    try:
        if type_text == "bool":
            lowered = raw.lower()
            if lowered in _TRUE:
                return True
            if lowered in _FALSE:
                return False
            raise ValueError("expected true/false")
        if type_text == "int":
            return int(raw)
        if type_text == "float":
            return float(raw)
        if type_text == "Path":
            return Path(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"environment variable {var}={raw!r} is invalid: {exc}") from None
