"""On-device preprocessing: face regions, skin traces, patches, quality and the tensor builder.

Heavy modules (cv2, mediapipe, numba) load lazily so that the tensor format (`contract.tensor`) stays importable by the
server, which must not pull in the capture-side stack: the pipeline names below resolve on first use
through the module `__getattr__`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from contract.tensor import Measurement, TensorFormatError, TensorMetadata, from_bytes, to_bytes

if TYPE_CHECKING:
    from preprocess.pipeline import FrameFeatures, PreprocessConfig, Preprocessor, process
    from preprocess.quality import QualityState, QualityTooLow, QualityWarning

_LAZY = {
    "Preprocessor": "preprocess.pipeline",
    "PreprocessConfig": "preprocess.pipeline",
    "FrameFeatures": "preprocess.pipeline",
    "process": "preprocess.pipeline",
    "QualityState": "preprocess.quality",
    "QualityWarning": "preprocess.quality",
    "QualityTooLow": "preprocess.quality",
}

__all__ = [
    "FrameFeatures",
    "Measurement",
    "PreprocessConfig",
    "Preprocessor",
    "QualityState",
    "QualityTooLow",
    "QualityWarning",
    "TensorFormatError",
    "TensorMetadata",
    "from_bytes",
    "process",
    "to_bytes",
]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'preprocess' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
