"""Server configuration: one frozen dataclass, read from the environment once at start-up.

Every knob has an environment variable so that `vitalcam serve` in a container needs no flags; keyword
overrides win over the environment so tests and the embedded server can pin values without touching
`os.environ` (which is process-wide and shared with other threads).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

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
    "max_json_body_bytes": "VITALCAM_MAX_JSON_BODY_BYTES",
    "header_timeout_s": "VITALCAM_HEADER_TIMEOUT_S",
    "body_timeout_s": "VITALCAM_BODY_TIMEOUT_S",
    "upload_timeout_s": "VITALCAM_UPLOAD_TIMEOUT_S",
    "trusted_proxies": "VITALCAM_TRUSTED_PROXIES",
    "database_url": "VITALCAM_DATABASE_URL",
    "blob_store": "VITALCAM_BLOB_STORE",
    "queue_url": "VITALCAM_QUEUE_URL",
    "result_wait_s": "VITALCAM_RESULT_WAIT_S",
    "single_process": "VITALCAM_SINGLE_PROCESS",
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
    # Base of the presigned upload URLs. None means "the loopback address this server listens on", which
    # is only allowed on loopback (`serve` refuses other hosts without it); never taken from a request header.
    public_base_url: str | None = None
    inference_workers: int = 2
    sweep_interval_s: float = 30.0
    # How long an expired session's tombstone (status only, no data) answers GET result before removal.
    expired_retention_s: int = 86400
    # Largest JSON request body (start, upload-complete); the spec's bodies are under 100 bytes.
    max_json_body_bytes: int = 8 * 1024
    # A connection must deliver a request's complete headers within this long of opening (or of the
    # previous response), else it is closed: idle and trickling connections cannot pile up.
    header_timeout_s: float = 10.0
    # Longest pause between two pieces of a request body before the request is answered 408.
    body_timeout_s: float = 15.0
    # Longest a whole upload body may take (about 70 KiB/s for a 64 MiB tensor), against trickling.
    upload_timeout_s: float = 900.0
    # Peers (IPs or CIDR networks) whose X-Forwarded-For/-Proto headers are believed; nobody by default.
    trusted_proxies: tuple[str, ...] = ()
    # The scaled configuration (docs/deploy.md); None keeps the embedded default: SQLite and a folder in
    # data_dir, inference in this process.
    database_url: str | None = None  # postgresql://user@host:port/db
    blob_store: str | None = None  # s3://bucket?endpoint=http://host:port&region=...
    queue_url: str | None = None  # redis://host:port/db: inference on `vitalcam worker` processes
    # How long upload-complete waits for a queued inference before answering (fallback vitals, or
    # RESULT_PENDING with PERSIST_VITALS=true so the client polls).
    result_wait_s: float = 120.0
    # This process is the only one using the stores, so it may reset what a previous run left mid-flight.
    single_process: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_dir", Path(self.data_dir).expanduser())
        if self.public_base_url is not None:
            object.__setattr__(self, "public_base_url", _checked_base_url(self.public_base_url))
        raw_proxies: object = self.trusted_proxies  # a str from callers that ignore the annotation
        proxies = _split_list(raw_proxies) if isinstance(raw_proxies, str) else tuple(self.trusted_proxies)
        object.__setattr__(self, "trusted_proxies", proxies)
        for name in (
            "rate_limit_per_hour",
            "monthly_quota",
            "session_ttl_s",
            "max_upload_bytes",
            "max_json_body_bytes",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.inference_workers < 1:
            raise ValueError(f"inference_workers must be >= 1, got {self.inference_workers}")
        for name in (
            "sweep_interval_s",
            "header_timeout_s",
            "body_timeout_s",
            "upload_timeout_s",
            "result_wait_s",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)}")
        for proxy in self.trusted_proxies:
            try:
                ipaddress.ip_network(proxy, strict=False)
            except ValueError:
                raise ValueError(
                    f"trusted_proxies: {proxy!r} is not an IP address or network (e.g. 10.0.0.5, 10.0.0.0/24)"
                ) from None
        if self.trusted_proxies and self.public_base_url is None:
            raise ValueError(
                "trusted_proxies needs public_base_url (VITALCAM_PUBLIC_BASE_URL): behind a proxy the server "
                "cannot know its public address, and it never takes one from request headers"
            )

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

    @property
    def scaled(self) -> bool:
        """Any part of the scaled configuration in use."""
        return bool(self.database_url or self.blob_store or self.queue_url)

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
        if type_text.startswith("tuple"):
            return _split_list(raw)
        return raw
    except ValueError as exc:
        raise ValueError(f"environment variable {var}={raw!r} is invalid: {exc}") from None


def _split_list(raw: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in raw.split(",") if part.strip())


def _checked_base_url(url: str) -> str | None:
    """`https://host[:port][/prefix]` without a trailing slash; anything else is a configuration error."""
    url = url.strip().rstrip("/")
    if not url:
        return None
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment:
        raise ValueError(
            f"public_base_url must look like https://host[:port][/path] (no query or fragment), got {url!r}"
        )
    return url
