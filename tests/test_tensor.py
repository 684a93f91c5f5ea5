"""Tensor format v1: round trips, one rejection per rule, and fuzzing that only TensorFormatError escapes."""

from __future__ import annotations

import dataclasses
import json
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from safetensors.numpy import load as safetensors_load
from safetensors.numpy import save as safetensors_save

from contract.tensor import (
    FACE_REGIONS,
    MAX_PAYLOAD_BYTES,
    Measurement,
    TensorFormatError,
    TensorMetadata,
    frame_rate_hz,
    from_bytes,
    to_bytes,
    validate,
)


def make(
    n_frames: int = 300, fps: float = 30.0, patches: bool = True, seed: int = 0, absent_every: int = 50
) -> Measurement:
    rng = np.random.default_rng(seed)
    t_s = np.arange(n_frames, dtype=np.float64) / fps + rng.uniform(0, 0.002, n_frames)
    n_regions = len(FACE_REGIONS)
    rgb = rng.uniform(60, 200, (n_frames, n_regions, 3)).astype(np.float32)
    skin_px = rng.integers(100, 5000, (n_frames, n_regions)).astype(np.int32)
    face_box = np.tile(np.float32([0.3, 0.2, 0.4, 0.5]), (n_frames, 1))
    # Some frames lose one region, some lose the face entirely.
    skin_px[::absent_every, 1] = 0
    rgb[::absent_every, 1] = np.nan
    face_box[7] = np.nan
    return Measurement(
        t_s=t_s,
        rgb=rgb,
        skin_px=skin_px,
        face_box=face_box,
        patches=rng.integers(0, 256, (n_frames, 72, 72, 3), dtype=np.uint8) if patches else None,
        meta=TensorMetadata(FACE_REGIONS, 640, 480, "camera", "vitalcam/test"),
    )


def replace(m: Measurement, **changes: object) -> Measurement:
    return dataclasses.replace(m, **changes)


def rewrite(data: bytes, edit: callable) -> bytes:
    """Apply `edit` to the parsed JSON header and reassemble the payload with the same tensor bytes."""
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    edit(header)
    raw = json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def assert_same(a: Measurement, b: Measurement) -> None:
    for name in ("t_s", "rgb", "skin_px", "face_box"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert getattr(a, name).dtype == getattr(b, name).dtype
    if a.patches is None:
        assert b.patches is None
    else:
        np.testing.assert_array_equal(a.patches, b.patches)
    assert a.meta == b.meta


@pytest.mark.parametrize("patches", [True, False])
def test_round_trip(patches: bool) -> None:
    m = make(patches=patches)
    back = from_bytes(to_bytes(m))
    assert_same(m, back)
    assert back.n_frames == 300 and back.n_regions == len(FACE_REGIONS)
    assert back.fps == pytest.approx(299 / (m.t_s[-1] - m.t_s[0]))


def test_payload_is_standard_safetensors() -> None:
    """Any safetensors reader can open our bytes, and bytes from the reference writer parse."""
    m = make(patches=False)
    data = to_bytes(m)
    tensors = safetensors_load(data)
    assert set(tensors) == {"t_s", "rgb", "skin_px", "face_box"}
    assert tensors["rgb"].dtype == np.float32 and tensors["t_s"].dtype == np.float64
    (n,) = struct.unpack("<Q", data[:8])
    metadata = json.loads(data[8 : 8 + n])["__metadata__"]
    assert metadata["format"] == "vitalcam-tensor" and metadata["version"] == "1"
    assert metadata["regions"] == ",".join(FACE_REGIONS)
    again = safetensors_save(tensors, metadata=metadata)
    assert_same(m, from_bytes(again))


def test_unknown_metadata_keys_are_kept_for_forward_compatibility() -> None:
    m = replace(make(patches=False), extra_metadata={"camera_model": "C920"})
    assert from_bytes(to_bytes(m)).extra_metadata == {"camera_model": "C920"}


def test_fps_is_derived_from_timestamps_not_assumed() -> None:
    m = make(n_frames=301, fps=15.0, patches=False)
    assert from_bytes(to_bytes(m)).fps == pytest.approx(15.0, rel=0.01)


BAD_MEASUREMENTS = [
    ("rgb", "dtype must be F32", lambda m: replace(m, rgb=m.rgb.astype(np.float64))),
    ("t_s", "dtype must be F64", lambda m: replace(m, t_s=m.t_s.astype(np.float32))),
    ("skin_px", "shape must be", lambda m: replace(m, skin_px=m.skin_px[:-1])),
    ("face_box", "shape must be", lambda m: replace(m, face_box=m.face_box[:, :3])),
    ("patches", "shape must be", lambda m: replace(m, patches=m.patches[:, :64])),
    ("t_s", "strictly increasing", lambda m: replace(m, t_s=np.concatenate([m.t_s[:10], m.t_s[9:-1]]))),
    ("t_s", "must be finite", lambda m: replace(m, t_s=np.where(np.arange(300) == 5, np.nan, m.t_s))),
    ("t_s", "duration", lambda m: replace(m, t_s=m.t_s / 10)),
    ("t_s", "duration", lambda m: replace(m, t_s=m.t_s * 20)),
    ("t_s", "frame rate", lambda m: replace(m, t_s=m.t_s * 10)),
    ("rgb", "finite where skin_px > 0", lambda m: replace(m, rgb=_put(m.rgb, (3, 0, 1), np.inf))),
    ("rgb", "finite where skin_px > 0", lambda m: replace(m, rgb=_put(m.rgb, (3, 0, 1), np.nan))),
    ("rgb", "0..255", lambda m: replace(m, rgb=_put(m.rgb, (3, 0, 1), 300.0))),
    ("rgb", "NaN where skin_px == 0", lambda m: replace(m, rgb=_put(m.rgb, (0, 1, 0), 10.0))),
    ("skin_px", ">= 0", lambda m: replace(m, skin_px=_put(m.skin_px, (3, 2), -1))),
    ("face_box", "all NaN", lambda m: replace(m, face_box=_put(m.face_box, (3, 0), np.nan))),
    ("face_box", "no inf", lambda m: replace(m, face_box=_put(m.face_box, (3, slice(None)), np.inf))),
    ("face_box", "w and h", lambda m: replace(m, face_box=_put(m.face_box, (3, 2), 0.0))),
    (
        "__metadata__.regions",
        "unique",
        lambda m: replace(m, meta=dataclasses.replace(m.meta, regions=("a", "b", "a", "c"))),
    ),
    (
        "__metadata__.source",
        "must be one of",
        lambda m: replace(m, meta=dataclasses.replace(m.meta, source="x")),
    ),
    (
        "__metadata__.frame_width",
        "1..",
        lambda m: replace(m, meta=dataclasses.replace(m.meta, frame_width=0)),
    ),
]


def _put(array: np.ndarray, index: tuple, value: float) -> np.ndarray:
    out = array.copy()
    out[index] = value
    return out


@pytest.mark.parametrize(("field", "rule", "mutate"), BAD_MEASUREMENTS)
def test_each_rule_rejected_on_write_and_read(field: str, rule: str, mutate: callable) -> None:
    bad = mutate(make())
    with pytest.raises(TensorFormatError, match=rule) as info:
        to_bytes(bad)
    assert info.value.field == field
    # The reader enforces the same rule on bytes written without validation.
    tensors = {k: getattr(bad, k) for k in ("t_s", "rgb", "skin_px", "face_box", "patches")}
    metadata = {
        "format": "vitalcam-tensor",
        "version": "1",
        "regions": ",".join(bad.meta.regions),
        "frame_width": str(bad.meta.frame_width),
        "frame_height": str(bad.meta.frame_height),
        "source": bad.meta.source,
        "sdk": bad.meta.sdk,
    }
    raw = safetensors_save({k: np.ascontiguousarray(v) for k, v in tensors.items()}, metadata=metadata)
    with pytest.raises(TensorFormatError, match=rule) as info:
        from_bytes(raw)
    assert info.value.field == field


def test_frame_rate_above_limit_rejected() -> None:
    m = make(n_frames=900, patches=False)
    with pytest.raises(TensorFormatError, match="frame rate 150"):
        to_bytes(replace(m, t_s=m.t_s / 5))


def test_oversize_payload_rejected_before_parsing() -> None:
    with pytest.raises(TensorFormatError, match="64") as info:
        from_bytes(b"\0" * (MAX_PAYLOAD_BYTES + 1))
    assert info.value.field == "payload"


def test_oversize_measurement_rejected_on_write_with_advice() -> None:
    m = make(n_frames=5400, fps=30.0, patches=True, absent_every=10_000)  # 180 s of patches ~ 84 MB
    with pytest.raises(TensorFormatError, match="traces-only"):
        to_bytes(m)


HEADER_EDITS = [
    ("__metadata__.format", "unknown format", lambda h: h["__metadata__"].update(format="other")),
    ("__metadata__.version", "unsupported version", lambda h: h["__metadata__"].update(version="2")),
    ("__metadata__.sdk", "missing", lambda h: h["__metadata__"].pop("sdk")),
    ("__metadata__", "missing", lambda h: h.pop("__metadata__")),
    ("__metadata__.frame_width", "decimal integer", lambda h: h["__metadata__"].update(frame_width="-5")),
    ("skin_px", "missing tensor", lambda h: h.pop("skin_px")),
    ("extra", "unknown tensor", lambda h: h.update(extra=h["t_s"])),
    ("rgb", "dtype must be F32", lambda h: h["rgb"].update(dtype="F16")),
    ("rgb", "data_offsets span", lambda h: h["rgb"].update(shape=[300, 4, 2])),
]


@pytest.mark.parametrize(("field", "rule", "edit"), HEADER_EDITS)
def test_header_edits_rejected(field: str, rule: str, edit: callable) -> None:
    with pytest.raises(TensorFormatError, match=rule) as info:
        from_bytes(rewrite(to_bytes(make(patches=False)), edit))
    assert info.value.field == field


def test_truncated_and_garbage_rejected() -> None:
    data = to_bytes(make(patches=False))
    with pytest.raises(TensorFormatError, match="truncated"):
        from_bytes(data[:-100])
    with pytest.raises(TensorFormatError, match="truncated"):
        from_bytes(data[:20])
    with pytest.raises(TensorFormatError, match="8-byte header"):
        from_bytes(b"abc")
    with pytest.raises(TensorFormatError, match="trailing"):
        from_bytes(data + b"\0")
    with pytest.raises(TensorFormatError):
        from_bytes(np.random.default_rng(1).bytes(4096))


VALID = to_bytes(make(n_frames=160, patches=False, seed=3))
VALID_M = from_bytes(VALID)
(_HEADER_LEN,) = struct.unpack("<Q", VALID[:8])
DATA_START = 8 + _HEADER_LEN
VALID_HEADER = json.loads(VALID[8:DATA_START])
ARRAYS = ("t_s", "rgb", "skin_px", "face_box")


def decode_or_none(data: bytes) -> Measurement | None:
    """The decoded measurement, or None when it was rejected; any other exception fails the test."""
    try:
        return from_bytes(data)
    except TensorFormatError:
        return None


def changed_elements(m: Measurement) -> int:
    """How many array elements differ from VALID's (NaN equals NaN: a flipped NaN payload bit is no change)."""
    changed = 0
    for name in ARRAYS:
        old, new = getattr(VALID_M, name), getattr(m, name)
        assert new.shape == old.shape and new.dtype == old.dtype, name
        same = (old == new) | (np.isnan(old) & np.isnan(new)) if old.dtype.kind == "f" else old == new
        changed += int(np.count_nonzero(~same))
    return changed


def assert_accepted_mutation_is_harmless(m: Measurement, position: int) -> None:
    """A mutation may only be accepted if the result is still valid v1 and changed no more than it touched:
    in the header nothing but metadata text (no array may change), in the data one element at most."""
    validate(m)
    assert changed_elements(m) <= (0 if position < DATA_START else 1)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.tuples(st.just("flip"), st.integers(0, len(VALID) - 1), st.integers(0, 7)),
        st.tuples(st.just("truncate"), st.integers(0, len(VALID) - 1), st.just(0)),
        st.tuples(st.just("byte"), st.integers(0, 600), st.integers(0, 255)),
    )
)
def test_mutated_payloads_are_rejected_or_harmless(mutation: tuple[str, int, int]) -> None:
    kind, position, value = mutation
    data = bytearray(VALID)
    if kind == "flip":
        data[position] ^= 1 << value
    elif kind == "truncate":
        data = data[:position]
    else:
        position = min(position, len(data) - 1)
        data[position] = value
    decoded = decode_or_none(bytes(data))
    if kind == "truncate":
        assert decoded is None  # a payload cut short is never accepted
    elif decoded is not None:
        assert_accepted_mutation_is_harmless(decoded, position)


def _count_rejected(payloads: list[bytes]) -> int:
    return sum(decode_or_none(p) is None for p in payloads)


def _with_byte(position: int, value: int) -> bytes:
    data = bytearray(VALID)
    data[position] = value
    return bytes(data)


def test_mutation_sweeps_reject_what_the_rules_forbid() -> None:
    """Exhaustive sweeps, each counted: every mutation below breaks a rule of docs/tensor-format.md."""
    cuts = [*range(DATA_START + 16), *range(DATA_START + 16, len(VALID), 37)]
    assert _count_rejected([VALID[:k] for k in cuts]) == len(cuts)  # every truncation
    length_bits = [_with_byte(i // 8, VALID[i // 8] ^ (1 << (i % 8))) for i in range(64)]
    assert _count_rejected(length_bits) == 64  # every bit of the header length
    nul_header = [_with_byte(i, 0) for i in range(8, DATA_START)]
    assert _count_rejected(nul_header) == _HEADER_LEN  # JSON allows no NUL byte anywhere
    t_start = DATA_START + VALID_HEADER["t_s"]["data_offsets"][0]
    # The sign bit of t_s[i] (the top bit of its last little-endian byte): no longer strictly increasing.
    negative_t = [_with_byte(t_start + 8 * i + 7, VALID[t_start + 8 * i + 7] | 0x80) for i in range(1, 160)]
    assert _count_rejected(negative_t) == 159
    rgb_start = DATA_START + VALID_HEADER["rgb"]["data_offsets"][0]
    present = np.flatnonzero(np.repeat(VALID_M.skin_px.reshape(-1) > 0, 3))
    absent = np.flatnonzero(np.repeat(VALID_M.skin_px.reshape(-1) == 0, 3))
    assert present.size > 0 and absent.size > 0
    # A present mean with exponent bits all set (inf or NaN, or above 1e38): not finite within 0..255.
    huge = [_with_byte(rgb_start + 4 * int(k) + 3, 0x7F) for k in present]
    assert _count_rejected(huge) == present.size
    # An absent region's NaN turned into the number 100.0: a mean with no skin pixels behind it.
    offsets = [rgb_start + 4 * int(k) for k in absent]
    one_each = [VALID[:at] + struct.pack("<f", 100.0) + VALID[at + 4 :] for at in offsets]
    assert _count_rejected(one_each) == absent.size


@settings(max_examples=150, deadline=None)
@given(
    st.sampled_from(["t_s", "rgb", "skin_px", "face_box"]),
    st.sampled_from(["F64", "F32", "F16", "I32", "I64", "U8", "BOOL"]),
    st.lists(st.integers(0, 400), min_size=0, max_size=4),
)
def test_dtype_and_shape_edits_are_rejected_unless_unchanged(name: str, dtype: str, shape: list[int]) -> None:
    def edit(header: dict) -> None:
        header[name]["dtype"] = dtype
        header[name]["shape"] = shape

    decoded = decode_or_none(rewrite(VALID, edit))
    if decoded is not None:  # each tensor has one dtype and one shape that fits T and R
        assert (dtype, shape) == (VALID_HEADER[name]["dtype"], VALID_HEADER[name]["shape"])
        assert changed_elements(decoded) == 0


def test_format_module_imports_without_heavy_stack() -> None:
    code = (
        "import sys, contract.tensor\n"
        "heavy = [m for m in ('cv2', 'mediapipe', 'numba') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# ---- hostile headers (issue 12): only TensorFormatError, whatever the header holds ------------------------


def header_text_payload(data: bytes, edit: callable) -> bytes:
    """Like `rewrite`, but on the header's text, so it can hold what json.dumps would never produce."""
    (n,) = struct.unpack("<Q", data[:8])
    raw = edit(data[8 : 8 + n].decode().rstrip()).encode()
    return struct.pack("<Q", len(raw)) + raw + data[8 + n :]


def _nest(depth: int, opener: str) -> callable:
    closer = "]" if opener == "[" else "}"
    inner = "[" * depth + "]" * depth if opener == "[" else '{"a":' * depth + "0" + closer * depth
    return lambda text: text[:-1] + f', "nested": {inner}' + "}"


def _long_number(digits: int, where: str) -> callable:
    number = "1" + "0" * (digits - 1)

    def edit(text: str) -> str:
        header = json.loads(text)
        if where == "offset":
            header["t_s"]["data_offsets"][0] = 987654321
        elif where == "shape":
            header["t_s"]["shape"][0] = 987654321
        else:
            header["extra_number"] = 987654321
        return json.dumps(header).replace("987654321", number, 1)

    return edit


def _dims(ndim: int, name: str) -> callable:
    def edit(text: str) -> str:
        header = json.loads(text)
        shape = header[name]["shape"]
        header[name]["shape"] = (
            (shape + [1] * ndim)[:ndim] if ndim < len(shape) else shape + [1] * (ndim - len(shape))
        )
        return json.dumps(header)

    return edit


@pytest.mark.parametrize(
    ("edit", "rule"),
    [
        (_nest(5000, "["), "nested deeper"),
        (_nest(5000, "{"), "nested deeper"),
        (_long_number(5000, "offset"), "more than 20 digits"),
        (_long_number(5000, "other"), "more than 20 digits"),
        (_dims(33, "t_s"), "shape must have 1 dimensions"),
        (_dims(64, "rgb"), "shape must have 3 dimensions"),
    ],
)
def test_header_attacks_are_named_format_errors(edit: callable, rule: str) -> None:
    """Deep nesting (RecursionError), 5000-digit integers (ValueError) and 33+ dimensions (numpy's limit)
    used to escape as other exceptions, which the server answered with a retryable 500."""
    with pytest.raises(TensorFormatError, match=rule):
        from_bytes(header_text_payload(VALID, edit))


def test_unencodable_names_give_printable_messages() -> None:
    def edit(text: str) -> str:
        header = json.loads(text)
        header["\ud800" * 1000] = header["t_s"]
        return json.dumps(header)

    with pytest.raises(TensorFormatError) as info:
        from_bytes(header_text_payload(VALID, edit))
    message = str(info.value)
    message.encode("utf-8")  # the server puts it in a UTF-8 JSON body
    assert len(message) < 400 and "unknown tensor" in message


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(
        st.tuples(st.just("nest"), st.integers(1, 6000), st.sampled_from(["[", "{"])),
        st.tuples(st.just("digits"), st.integers(1, 6000), st.sampled_from(["offset", "shape", "other"])),
        st.tuples(
            st.just("dims"), st.integers(0, 80), st.sampled_from(["t_s", "rgb", "skin_px", "face_box"])
        ),
        st.tuples(st.just("text"), st.integers(0, 400), st.text(max_size=40)),
    )
)
def test_hostile_header_mutations_only_raise_format_error(mutation: tuple[str, int, str]) -> None:
    """The mutator of issue 12: nesting depth, number length, dimension count and arbitrary text."""
    kind, size, arg = mutation
    if kind == "nest":
        edit = _nest(size, arg)
    elif kind == "digits":
        edit = _long_number(size, arg)
    elif kind == "dims":
        assume(
            size != {"t_s": 1, "rgb": 3, "skin_px": 2, "face_box": 2}[arg]
        )  # the same shape is no mutation
        edit = _dims(size, arg)
    else:
        edit = lambda text: text[:size] + arg + text[size:]  # noqa: E731
    decoded = decode_or_none(header_text_payload(VALID, edit))
    if kind != "text":  # deep nesting, a 20+ digit number, another number of dimensions: always refused
        assert decoded is None
    elif decoded is not None:  # text that kept the header valid (whitespace, metadata text) changed no number
        assert_accepted_mutation_is_harmless(decoded, 8)


# ---- one set of frame-rate limits, shared with inference (issue 12) ---------------------------------------


def with_timestamps(t_s: np.ndarray) -> Measurement:
    n = t_s.shape[0]
    return Measurement(
        t_s=t_s,
        rgb=np.full((n, len(FACE_REGIONS), 3), 120.0, dtype=np.float32),
        skin_px=np.full((n, len(FACE_REGIONS)), 1000, dtype=np.int32),
        face_box=np.tile(np.float32([0.3, 0.2, 0.4, 0.5]), (n, 1)),
        patches=None,
        meta=TensorMetadata(FACE_REGIONS, 640, 480, "camera", "vitalcam/test"),
    )


def _intervals(pattern: list[float], duration_s: float) -> np.ndarray:
    steps = np.tile(pattern, int(duration_s / sum(pattern)) + 1)
    return np.concatenate([[0.0], np.cumsum(steps)])


TIMING_CASES = {
    "exactly 120 fps for 180 s": np.arange(21601) / 120.0,
    "exactly 5 fps for 180 s": np.arange(901) / 5.0,
    "119.5 fps": np.arange(3586) / 119.5,
    "5.5 fps": np.arange(166) / 5.5,
    "bursts: mean 50 fps, median 250": _intervals([0.004, 0.004, 0.052], 30.0),
    "gaps: mean 5.5 fps, median 4": _intervals([0.25, 0.25, 0.045], 30.0),
}


@pytest.mark.parametrize("name", list(TIMING_CASES))
def test_validator_and_inference_agree_on_the_frame_rate(name: str) -> None:
    """What the validator accepts, inference accepts: both use 1 / median interval and the same limits."""
    from server.inference import InferenceFailed
    from server.inference.conditioning import check_timestamps

    t_s = TIMING_CASES[name]
    try:
        validate(with_timestamps(t_s))
        validator_ok = True
    except TensorFormatError as exc:
        assert exc.field == "t_s" and "frame rate" in exc.rule
        validator_ok = False
    try:
        check_timestamps(t_s)
        inference_ok = True
    except InferenceFailed:
        inference_ok = False
    assert validator_ok == inference_ok
    assert frame_rate_hz(t_s) == pytest.approx(1.0 / float(np.median(np.diff(t_s))))


def test_frame_rate_is_the_median_interval_rate() -> None:
    bursts = TIMING_CASES["bursts: mean 50 fps, median 250"]
    assert frame_rate_hz(bursts) == pytest.approx(250.0)
    assert with_timestamps(bursts).fps == pytest.approx(50.0, rel=0.01)  # the mean would have passed
    with pytest.raises(TensorFormatError, match=r"frame rate 250\.00 fps"):
        validate(with_timestamps(bursts))
