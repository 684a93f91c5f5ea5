"""Frame sources: live camera, video file replay and network streams, behind one interface."""

from capture.frame import Frame, SourceKind

__all__ = ["Frame", "SourceKind"]
