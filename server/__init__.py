"""Reference backend for the sessions API, with real rPPG inference."""
