"""The contract both sides of vitalcam share: the tensor format, the vitals, the limits and the version.

It sits at the bottom of the house: capture, preprocess, transport, server and the CLI import it and it
imports none of them, and it needs nothing beyond numpy and safetensors (the tensor format), so the
server and other-language ports can depend on it alone.
"""

from __future__ import annotations

__version__ = "0.1.0"
