"""One provider's HTTP side: the client with per-URL fallback, answer parsing, request errors, keys."""
