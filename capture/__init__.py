"""Frame sources: live camera, video file replay and network streams, behind one interface."""

from capture.camera import CameraDescription, CameraSource, list_cameras
from capture.errors import CameraNotFound, CaptureError, SourceLost, VideoFileError
from capture.frame import Frame, SourceKind
from capture.opening import open_source
from capture.source import FrameSource, SourceInfo
from capture.video import VideoFileSource

__all__ = [
    "CameraDescription",
    "CameraNotFound",
    "CameraSource",
    "CaptureError",
    "Frame",
    "FrameSource",
    "SourceInfo",
    "SourceKind",
    "SourceLost",
    "VideoFileError",
    "VideoFileSource",
    "list_cameras",
    "open_source",
]
