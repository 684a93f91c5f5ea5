"""vitalcam: camera vital signs, measured on-device and inferred by a sessions-API backend."""

from contract import __version__

__all__ = ["__version__"]
