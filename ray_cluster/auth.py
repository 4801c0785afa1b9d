"""Bearer-token check for the OpenAI endpoint, shared by the CPU engine and the production app.

The token never travels in a Serve config: the config names an environment variable (or a file)
and the replica reads the value where it runs.
"""

from __future__ import annotations

import hmac
import os
from pathlib import Path


class TokenSourceError(RuntimeError):
    """The configured token source is missing or empty."""


def load_token(env_name: str | None = None, file_path: str | None = None) -> str:
    """Read the API token from the named env var, else the file. Raises TokenSourceError."""
    if env_name:
        value = os.environ.get(env_name, "").strip()
        if not value:
            raise TokenSourceError(f"api_token_env: environment variable {env_name!r} is unset or empty")
        return value
    if file_path:
        try:
            value = Path(file_path).read_text().strip()
        except OSError as e:
            raise TokenSourceError(f"api_token_file: cannot read {file_path!r}: {e.strerror}") from None
        if not value:
            raise TokenSourceError(f"api_token_file: {file_path!r} is empty")
        return value
    raise TokenSourceError("no token source: set api_token_env or api_token_file")


def bearer_ok(authorization: str | None, expected: str) -> bool:
    """True when the header is exactly 'Bearer <expected>' (constant-time on the token)."""
    if not authorization:
        return False
    scheme, _, presented = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(presented.strip().encode(), expected.encode())
