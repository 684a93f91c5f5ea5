"""The vitalcam tensor, format v1: the only thing that leaves the device.

One module owns reading, writing and validating it, and both the SDK and the reference backend import it.
It must stay importable without cv2, mediapipe or numba: the server and other-language ports depend only
on numpy and safetensors. docs/tensor-format.md is the byte-level description; keep the two in step.

The container is safetensors (8-byte little-endian header length, a JSON header, then raw little-endian
tensor bytes). We parse and check the header ourselves before handing the buffer to safetensors, so that
every rejection names the field and the rule that failed instead of surfacing a library error.

`from_bytes` reads untrusted bytes on the server, so it raises TensorFormatError and nothing else for any
input: the header's nesting depth and the length of its numbers are bounded before the JSON parser sees
it (deep nesting would raise RecursionError, a 5000-digit integer ValueError), and every shape must have
exactly its tensor's number of dimensions before numpy reshapes anything.

The frame-rate limits and the way the frame rate is measured (`frame_rate_hz`, one over the median frame
interval) are the ones the inference engine applies, so nothing the validator accepts is rejected later
for its timing.
"""

from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass, field
from typing import Any, Final, Literal

import numpy as np

FORMAT_NAME: Final = "vitalcam-tensor"
FORMAT_VERSION: Final = "1"
PATCH_SIZE_PX: Final = 72
MAX_PAYLOAD_BYTES: Final = 64 * 1024 * 1024
MIN_DURATION_S: Final = 5.0
MAX_DURATION_S: Final = 180.0
MIN_FPS: Final = 5.0
MAX_FPS: Final = 120.0
MAX_REGIONS: Final = 16
MAX_FRAME_SIDE_PX: Final = 16384
FACE_REGIONS: Final = ("forehead", "left_cheek", "right_cheek", "face", "face_left", "face_right")
FULL_FRAME_REGIONS: Final = ("frame",)
SOURCES: Final = ("camera", "video")
# Optional metadata: compressed bits per pixel per frame of a replayed video (decimal string).
VIDEO_BITS_PER_PIXEL_KEY: Final = "video_bits_per_pixel"

Source = Literal["camera", "video"]

_REQUIRED_TENSORS: Final = ("t_s", "rgb", "skin_px", "face_box")
_OPTIONAL_TENSORS: Final = ("patches",)
_DTYPES: Final = {"t_s": "F64", "rgb": "F32", "skin_px": "I32", "face_box": "F32", "patches": "U8"}
_NUMPY_DTYPES: Final[dict[str, np.dtype[Any]]] = {
    "t_s": np.dtype("<f8"),
    "rgb": np.dtype("<f4"),
    "skin_px": np.dtype("<i4"),
    "face_box": np.dtype("<f4"),
    "patches": np.dtype("u1"),
}
_DTYPE_SIZES: Final = {"F64": 8, "F32": 4, "I32": 4, "U8": 1}
_REQUIRED_METADATA: Final = ("format", "version", "regions", "frame_width", "frame_height", "source", "sdk")
_NDIMS: Final = {"t_s": 1, "rgb": 3, "skin_px": 2, "face_box": 2, "patches": 4}
_REGION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,31}$")
_MAX_HEADER_BYTES: Final = 1024 * 1024
# A v1 header nests 3 deep ({ -> tensor { -> shape [); its numbers are offsets below 2**40 (13 digits).
MAX_HEADER_DEPTH: Final = 8
MAX_HEADER_NUMBER_DIGITS: Final = 20
# JSON strings (with escapes), to blank out before counting brackets and digits outside them.
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_LONG_DIGITS = re.compile(rf"[0-9]{{{MAX_HEADER_NUMBER_DIGITS + 1},}}")
_MAX_MESSAGE_PART_CHARS: Final = 200


class TensorFormatError(ValueError):
    """A payload or measurement that breaks format v1; the message names the field and the rule."""

    def __init__(self, field_name: str, rule: str) -> None:
        field_name, rule = _printable(field_name), _printable(rule)
        super().__init__(f"{field_name}: {rule}")
        self.field = field_name
        self.rule = rule


def _printable(text: str) -> str:
    """Untrusted names go into messages: clip them, and escape what UTF-8 cannot encode (lone surrogates)."""
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text if len(text) <= _MAX_MESSAGE_PART_CHARS else text[:_MAX_MESSAGE_PART_CHARS] + "…"


@dataclass(frozen=True, slots=True)
class TensorMetadata:
    """The typed `__metadata__` of a payload (format and version are implied by the type)."""

    regions: tuple[str, ...]
    frame_width: int
    frame_height: int
    source: Source
    sdk: str


@dataclass(frozen=True, slots=True, eq=False)
class Measurement:
    """Everything one measurement sends: per-frame traces plus optional face patches.

    Arrays (T frames, R regions): `t_s` float64 [T] capture time in seconds, strictly increasing;
    `rgb` float32 [T, R, 3] mean skin R, G, B (0..255), NaN where the region was absent;
    `skin_px` int32 [T, R] pixels behind each mean (0 = absent); `face_box` float32 [T, 4] x, y, w, h
    normalised to the frame, NaN rows when no face; `patches` uint8 [T, 72, 72, 3] RGB or None.
    """

    t_s: np.ndarray
    rgb: np.ndarray
    skin_px: np.ndarray
    face_box: np.ndarray
    patches: np.ndarray | None
    meta: TensorMetadata
    extra_metadata: dict[str, str] = field(default_factory=dict)

    @property
    def n_frames(self) -> int:
        return int(self.t_s.shape[0])

    @property
    def n_regions(self) -> int:
        return len(self.meta.regions)

    @property
    def duration_s(self) -> float:
        """Span of the capture timestamps (first to last frame)."""
        return float(self.t_s[-1] - self.t_s[0]) if self.n_frames > 1 else 0.0

    @property
    def fps(self) -> float:
        """Mean frame rate derived from the real timestamps, never from a nominal rate.

        Informational; the limits apply to `frame_rate_hz(t_s)`, the median-interval rate inference uses.
        """
        duration_s = self.duration_s
        return (self.n_frames - 1) / duration_s if duration_s > 0 else 0.0


def frame_rate_hz(t_s: np.ndarray) -> float:
    """The frame rate as the inference engine measures it: one over the median frame interval.

    The median, not the mean, because a camera that delivers frames in bursts (pairs 1 ms apart, then a
    long gap) has a sensible mean and an absurd sampling grid. `t_s` must be strictly increasing float64
    with at least 2 frames; the validator checks limits MIN_FPS..MAX_FPS on exactly this number.
    """
    return 1.0 / float(np.median(np.diff(t_s)))


def validate(m: Measurement) -> None:
    """Raise TensorFormatError for the first rule the measurement breaks."""
    _validate_metadata(m.meta)
    _check_array("t_s", m.t_s, ndim=1)
    n_frames = m.t_s.shape[0]
    n_regions = len(m.meta.regions)
    _check_array("rgb", m.rgb, shape=(n_frames, n_regions, 3))
    _check_array("skin_px", m.skin_px, shape=(n_frames, n_regions))
    _check_array("face_box", m.face_box, shape=(n_frames, 4))
    if m.patches is not None:
        _check_array("patches", m.patches, shape=(n_frames, PATCH_SIZE_PX, PATCH_SIZE_PX, 3))
    _validate_timing(m.t_s)
    _validate_values(m)


def to_bytes(m: Measurement) -> bytes:
    """Serialise a measurement after validating it, so nothing the server would reject leaves the device."""
    validate(m)
    from safetensors.numpy import save

    tensors = {
        name: np.ascontiguousarray(getattr(m, name), dtype=_NUMPY_DTYPES[name])
        for name in _DTYPES
        if getattr(m, name) is not None
    }
    metadata = {**m.extra_metadata, **_metadata_dict(m.meta)}
    data = save(tensors, metadata=metadata)
    if len(data) > MAX_PAYLOAD_BYTES:
        raise TensorFormatError(
            "payload",
            f"{len(data)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit; use traces-only mode (no patches) "
            "or a shorter measurement",
        )
    return data


def from_bytes(data: bytes | bytearray | memoryview) -> Measurement:
    """Parse and fully validate a payload; any defect raises TensorFormatError and nothing else."""
    buffer = bytes(data)
    if len(buffer) > MAX_PAYLOAD_BYTES:
        raise TensorFormatError("payload", f"{len(buffer)} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")
    header, data_start = _parse_header(buffer)
    metadata = header.pop("__metadata__", None)
    meta, extra = _parse_metadata(metadata)
    arrays = _read_tensors(header, buffer, data_start)
    m = Measurement(
        t_s=arrays["t_s"],
        rgb=arrays["rgb"],
        skin_px=arrays["skin_px"],
        face_box=arrays["face_box"],
        patches=arrays.get("patches"),
        meta=meta,
        extra_metadata=extra,
    )
    validate(m)
    return m


def _metadata_dict(meta: TensorMetadata) -> dict[str, str]:
    return {
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "regions": ",".join(meta.regions),
        "frame_width": str(meta.frame_width),
        "frame_height": str(meta.frame_height),
        "source": meta.source,
        "sdk": meta.sdk,
    }


def _parse_header(buffer: bytes) -> tuple[dict[str, object], int]:
    if len(buffer) < 8:
        raise TensorFormatError(
            "payload", f"truncated: {len(buffer)} bytes is shorter than the 8-byte header"
        )
    (header_len,) = struct.unpack("<Q", buffer[:8])
    if header_len > _MAX_HEADER_BYTES:
        raise TensorFormatError("header", f"declared length {header_len} exceeds {_MAX_HEADER_BYTES} bytes")
    if 8 + header_len > len(buffer):
        raise TensorFormatError(
            "header", f"truncated: declares {header_len} bytes, {len(buffer) - 8} present"
        )
    try:
        text = buffer[8 : 8 + header_len].decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TensorFormatError("header", f"not valid UTF-8 JSON ({exc})") from None
    _check_header_shape(text)
    try:
        header = json.loads(text)
    except (ValueError, RecursionError) as exc:  # JSONDecodeError is a ValueError
        raise TensorFormatError("header", f"not valid UTF-8 JSON ({exc})") from None
    if not isinstance(header, dict):
        raise TensorFormatError("header", "must be a JSON object")
    return header, 8 + header_len


def _check_header_shape(text: str) -> None:
    """Bound nesting depth and number length before parsing, so the parser cannot fail in other ways.

    Strings are blanked out first, so brackets and digits inside names and metadata values do not count.
    """
    outside_strings = _JSON_STRING.sub('""', text)
    codes = np.frombuffer(outside_strings.encode("utf-8"), dtype=np.uint8)
    opens = (codes == ord("[")) | (codes == ord("{"))
    closes = (codes == ord("]")) | (codes == ord("}"))
    if codes.size and int(np.cumsum(opens.astype(np.int64) - closes).max()) > MAX_HEADER_DEPTH:
        raise TensorFormatError("header", f"JSON nested deeper than {MAX_HEADER_DEPTH} levels")
    if _LONG_DIGITS.search(outside_strings):
        raise TensorFormatError("header", f"a number has more than {MAX_HEADER_NUMBER_DIGITS} digits")


def _parse_metadata(metadata: object) -> tuple[TensorMetadata, dict[str, str]]:
    if not isinstance(metadata, dict):
        raise TensorFormatError("__metadata__", "missing or not a JSON object")
    for key, value in metadata.items():
        if not isinstance(value, str):
            raise TensorFormatError(f"__metadata__.{key}", "must be a string")
    for key in _REQUIRED_METADATA:
        if key not in metadata:
            raise TensorFormatError(f"__metadata__.{key}", "missing")
    if metadata["format"] != FORMAT_NAME:
        raise TensorFormatError("__metadata__.format", f"unknown format {metadata['format']!r}")
    if metadata["version"] != FORMAT_VERSION:
        raise TensorFormatError(
            "__metadata__.version", f"unsupported version {metadata['version']!r} (this reader knows 1)"
        )
    meta = TensorMetadata(
        regions=tuple(metadata["regions"].split(",")),
        frame_width=_parse_int("__metadata__.frame_width", metadata["frame_width"]),
        frame_height=_parse_int("__metadata__.frame_height", metadata["frame_height"]),
        source=metadata["source"],  # checked in _validate_metadata
        sdk=metadata["sdk"],
    )
    extra = {k: v for k, v in metadata.items() if k not in _REQUIRED_METADATA}
    return meta, extra


def _parse_int(field_name: str, text: str) -> int:
    if not re.fullmatch(r"[0-9]{1,6}", text):
        raise TensorFormatError(field_name, f"must be a positive decimal integer, got {text!r}")
    return int(text)


def _read_tensors(header: dict[str, object], buffer: bytes, data_start: int) -> dict[str, np.ndarray]:
    known = set(_REQUIRED_TENSORS) | set(_OPTIONAL_TENSORS)
    for name in header:
        if name not in known:
            raise TensorFormatError(
                name, "unknown tensor (format v1 has t_s, rgb, skin_px, face_box, patches)"
            )
    for name in _REQUIRED_TENSORS:
        if name not in header:
            raise TensorFormatError(name, "missing tensor")
    data_len = len(buffer) - data_start
    spans: list[tuple[int, int, str]] = []
    arrays: dict[str, np.ndarray] = {}
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != {"dtype", "shape", "data_offsets"}:
            raise TensorFormatError(name, "tensor entry must have exactly dtype, shape and data_offsets")
        dtype, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if dtype != _DTYPES[name]:
            raise TensorFormatError(name, f"dtype must be {_dtype_label(name)}, got {dtype!r}")
        if not (isinstance(shape, list) and all(_is_count(d) for d in shape)):
            raise TensorFormatError(name, f"shape must be a list of non-negative integers, got {shape!r}")
        if len(shape) != _NDIMS[name]:
            raise TensorFormatError(name, f"shape must have {_NDIMS[name]} dimensions, got {len(shape)}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(_is_count(o) for o in offsets)):
            raise TensorFormatError(name, f"data_offsets must be [begin, end], got {offsets!r}")
        begin, end = offsets
        expected = math.prod(shape) * _DTYPE_SIZES[dtype]
        if end < begin or end - begin != expected:
            raise TensorFormatError(name, f"data_offsets span {end - begin} bytes, shape needs {expected}")
        if end > data_len:
            raise TensorFormatError(name, f"truncated: data ends at byte {end}, payload has {data_len}")
        spans.append((begin, end, name))
        raw = buffer[data_start + begin : data_start + end]
        arrays[name] = np.frombuffer(raw, dtype=_NUMPY_DTYPES[name]).reshape(shape)
    spans.sort()
    cursor = 0
    for begin, end, name in spans:
        if begin != cursor:
            raise TensorFormatError(name, "tensor data must be contiguous without gaps or overlaps")
        cursor = end
    if cursor != data_len:
        raise TensorFormatError("payload", f"{data_len - cursor} trailing bytes after the last tensor")
    return arrays


def _dtype_label(name: str) -> str:
    return f"{_DTYPES[name]} ({_NUMPY_DTYPES[name].name})"


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**40


def _validate_metadata(meta: TensorMetadata) -> None:
    if not 1 <= len(meta.regions) <= MAX_REGIONS:
        raise TensorFormatError("__metadata__.regions", f"must list 1 to {MAX_REGIONS} regions")
    for name in meta.regions:
        if not _REGION_NAME.match(name):
            raise TensorFormatError("__metadata__.regions", f"invalid region name {name!r}")
    if len(set(meta.regions)) != len(meta.regions):
        raise TensorFormatError("__metadata__.regions", "region names must be unique")
    for name, value in (("frame_width", meta.frame_width), ("frame_height", meta.frame_height)):
        if not 1 <= value <= MAX_FRAME_SIDE_PX:
            raise TensorFormatError(f"__metadata__.{name}", f"must be 1..{MAX_FRAME_SIDE_PX}, got {value}")
    if meta.source not in SOURCES:
        raise TensorFormatError(
            "__metadata__.source", f"must be one of {', '.join(SOURCES)}, got {meta.source!r}"
        )
    if not meta.sdk or len(meta.sdk) > 64:
        raise TensorFormatError("__metadata__.sdk", "must be a non-empty string of at most 64 characters")


def _check_array(name: str, array: object, *, shape: tuple[int, ...] | None = None, ndim: int = 0) -> None:
    if not isinstance(array, np.ndarray):
        raise TensorFormatError(name, f"must be a numpy array, got {type(array).__name__}")
    if array.dtype != _NUMPY_DTYPES[name]:
        raise TensorFormatError(name, f"dtype must be {_dtype_label(name)}, got {array.dtype.name}")
    if shape is not None and array.shape != shape:
        raise TensorFormatError(
            name, f"shape must be {list(shape)} to match t_s and regions, got {list(array.shape)}"
        )
    if ndim and array.ndim != ndim:
        raise TensorFormatError(name, f"must be {ndim}-dimensional, got shape {list(array.shape)}")


def _validate_timing(t_s: np.ndarray) -> None:
    if t_s.shape[0] < 2:
        raise TensorFormatError("t_s", f"needs at least 2 frames, got {t_s.shape[0]}")
    if not np.all(np.isfinite(t_s)):
        raise TensorFormatError("t_s", "must be finite (no NaN or inf)")
    if not np.all(np.diff(t_s) > 0):
        first = int(np.argmax(np.diff(t_s) <= 0))
        raise TensorFormatError(
            "t_s", f"must be strictly increasing (frame {first + 1} is not after frame {first})"
        )
    duration_s = float(t_s[-1] - t_s[0])
    if not MIN_DURATION_S <= duration_s <= MAX_DURATION_S:
        raise TensorFormatError(
            "t_s", f"duration {duration_s:.2f} s outside {MIN_DURATION_S:g}..{MAX_DURATION_S:g} s"
        )
    fps = frame_rate_hz(t_s)
    if not MIN_FPS <= fps <= MAX_FPS:
        shown = f"{fps:.2f}"
        if MIN_FPS <= float(shown) <= MAX_FPS:  # just outside: show enough digits to see why
            shown = repr(fps)
        raise TensorFormatError(
            "t_s",
            f"frame rate {shown} fps (1 / median frame interval) outside {MIN_FPS:g}..{MAX_FPS:g} fps",
        )


def _validate_values(m: Measurement) -> None:
    if np.any(m.skin_px < 0):
        raise TensorFormatError("skin_px", "must be >= 0")
    present = m.skin_px > 0
    rgb_finite = np.isfinite(m.rgb)
    if not np.all(rgb_finite[present]):
        raise TensorFormatError("rgb", "must be finite where skin_px > 0")
    if np.any(m.rgb[present] < 0) or np.any(m.rgb[present] > 255):
        raise TensorFormatError("rgb", "must lie in 0..255 where skin_px > 0")
    if not np.all(np.isnan(m.rgb[~present])):
        raise TensorFormatError("rgb", "must be NaN where skin_px == 0 (region absent)")
    box_nan = np.isnan(m.face_box)
    partial = box_nan.any(axis=1) & ~box_nan.all(axis=1)
    if np.any(partial):
        raise TensorFormatError("face_box", "a row must be all NaN (no face) or all finite")
    boxes = m.face_box[~box_nan.any(axis=1)]
    if not np.all(np.isfinite(boxes)):
        raise TensorFormatError("face_box", "must be finite where a face is present (no inf)")
    if np.any(boxes[:, 2:] <= 0) or np.any(np.abs(boxes) > 4):
        raise TensorFormatError(
            "face_box", "w and h must be > 0 and values normalised to the frame (|v| <= 4)"
        )
