"""On-device preprocessing: face regions, skin traces, patches, quality and the tensor builder.

Heavy modules (cv2, mediapipe, numba) load lazily so that `preprocess.tensor` stays importable by the
server, which must not pull in the capture-side stack.
"""

from preprocess.tensor import Measurement, TensorFormatError, TensorMetadata, from_bytes, to_bytes

__all__ = ["Measurement", "TensorFormatError", "TensorMetadata", "from_bytes", "to_bytes"]
