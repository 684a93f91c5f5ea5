"""Session-API client: start, upload, complete, poll; typed errors, retries and an outbox."""
