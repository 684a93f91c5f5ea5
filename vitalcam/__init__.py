"""vitalcam: camera vital signs, measured on-device and inferred by a sessions-API backend."""

__version__ = "0.1.0"
