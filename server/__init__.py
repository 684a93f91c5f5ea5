"""Reference backend for the sessions API, with real rPPG inference.

Public API (used by the CLI, the embedded default of `vitalcam measure`, and tests):
`create_app`, `ServerConfig`, `serve`, `start_embedded` / `EmbeddedServer`, and the key admin functions
`create_key`, `revoke_key`, `list_keys` with `default_data_dir`. docs/api.md describes the HTTP API.
Importing this package does not import `capture/`, cv2 or mediapipe.
"""

from server.app import create_app
from server.config import ServerConfig, default_data_dir
from server.keys import KeyInfo, create_key, list_keys, revoke_key
from server.runner import EmbeddedServer, serve, start_embedded

__all__ = [
    "EmbeddedServer",
    "KeyInfo",
    "ServerConfig",
    "create_app",
    "create_key",
    "default_data_dir",
    "list_keys",
    "revoke_key",
    "serve",
    "start_embedded",
]
