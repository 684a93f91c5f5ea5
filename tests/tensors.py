"""Build valid vitalcam tensors in tests without a camera, cv2 or mediapipe.

Server and transport tests need payloads that pass `contract.tensor.from_bytes`; rendering a video and
running face landmarks for each would cost seconds per test. These are synthetic traces with a plausible
pulse (green channel strongest, as in real rPPG), a slow respiratory baseline drift and sensor noise.
"""

from __future__ import annotations

import numpy as np

from contract.tensor import (
    FACE_REGIONS,
    FORMAT_NAME,
    FORMAT_VERSION,
    PATCH_SIZE_PX,
    Measurement,
    TensorMetadata,
    to_bytes,
)

# Mean skin colour (R, G, B) and skin pixels per face region, and the relative pulse amplitude per channel
# (green carries most).
_REGION_SKIN = {
    "forehead": ((182.0, 132.0, 112.0), 2400),
    "left_cheek": ((176.0, 126.0, 108.0), 1500),
    "right_cheek": ((178.0, 128.0, 109.0), 1500),
    "face": ((180.0, 130.0, 110.0), 9000),
    "face_left": ((179.0, 129.0, 110.0), 4500),
    "face_right": ((181.0, 131.0, 110.0), 4500),
}
_SKIN_RGB = np.array([_REGION_SKIN[name][0] for name in FACE_REGIONS])
_SKIN_PX = np.array([_REGION_SKIN[name][1] for name in FACE_REGIONS], dtype=np.int32)
_PULSE_GAIN_RGB = np.array([0.33, 1.0, 0.2])


def make_measurement(
    duration_s: float = 30.0,
    fps: float = 30.0,
    hr_bpm: float = 72.0,
    patches: bool = False,
    seed: int = 0,
    rr_bpm: float = 15.0,
) -> Measurement:
    """A valid measurement: `duration_s` of frames at `fps` with a pulse at `hr_bpm` in every face region."""
    rng = np.random.default_rng(seed)
    n_frames = round(duration_s * fps) + 1
    # Real timestamps carry jitter; keep it small enough that they stay strictly increasing.
    t_s = np.arange(n_frames, dtype=np.float64) / fps
    t_s[1:-1] += rng.uniform(-0.1, 0.1, n_frames - 2) / fps
    pulse = np.sin(2 * np.pi * (hr_bpm / 60.0) * t_s)
    breath = np.sin(2 * np.pi * (rr_bpm / 60.0) * t_s)
    n_regions = len(FACE_REGIONS)
    rgb = (
        _SKIN_RGB[None, :, :]
        + 0.8 * pulse[:, None, None] * _PULSE_GAIN_RGB[None, None, :]
        + 0.5 * breath[:, None, None]
        + rng.normal(0.0, 0.15, (n_frames, n_regions, 3))
    ).astype(np.float32)
    skin_px = np.tile(_SKIN_PX, (n_frames, 1))
    face_box = np.tile(np.array([0.35, 0.25, 0.3, 0.45], dtype=np.float32), (n_frames, 1))
    face_box += rng.normal(0.0, 0.002, face_box.shape).astype(np.float32)
    face_patches = None
    if patches:
        base = (
            _SKIN_RGB[FACE_REGIONS.index("face")][None, None, None, :]
            + 0.8 * pulse[:, None, None, None] * _PULSE_GAIN_RGB
        )
        face_patches = np.broadcast_to(base, (n_frames, PATCH_SIZE_PX, PATCH_SIZE_PX, 3))
        face_patches = np.clip(np.rint(face_patches), 0, 255).astype(np.uint8)
    meta = TensorMetadata(
        regions=FACE_REGIONS, frame_width=640, frame_height=480, source="video", sdk="vitalcam-tests"
    )
    return Measurement(t_s=t_s, rgb=rgb, skin_px=skin_px, face_box=face_box, patches=face_patches, meta=meta)


def make_payload(**kwargs: object) -> bytes:
    """`make_measurement(**kwargs)` serialised with `to_bytes`, ready to PUT."""
    return to_bytes(make_measurement(**kwargs))  # type: ignore[arg-type]


def unchecked_bytes(m: Measurement) -> bytes:
    """Serialise without validating: well-formed safetensors that may break format v1's rules.

    For tests of the reader's rejections (too short, bad timestamps, values out of range).
    """
    from safetensors.numpy import save

    tensors = {
        "t_s": np.ascontiguousarray(m.t_s, dtype="<f8"),
        "rgb": np.ascontiguousarray(m.rgb, dtype="<f4"),
        "skin_px": np.ascontiguousarray(m.skin_px, dtype="<i4"),
        "face_box": np.ascontiguousarray(m.face_box, dtype="<f4"),
    }
    if m.patches is not None:
        tensors["patches"] = np.ascontiguousarray(m.patches, dtype="u1")
    metadata = {
        **m.extra_metadata,
        "format": FORMAT_NAME,
        "version": FORMAT_VERSION,
        "regions": ",".join(m.meta.regions),
        "frame_width": str(m.meta.frame_width),
        "frame_height": str(m.meta.frame_height),
        "source": m.meta.source,
        "sdk": m.meta.sdk,
    }
    return save(tensors, metadata=metadata)
