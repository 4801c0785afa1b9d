"""No AWS credentials: one recognisable case with one fix, for every command that calls AWS.

botocore raises NoCredentialsError ("Unable to locate credentials") from each call; a command
that makes several calls (preflight's checks, cost --live's prices) says so once instead.
"""

from __future__ import annotations

FIX = (
    "configure them with `aws configure` (or `aws sso login`), AWS_PROFILE, or "
    "AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY"
)
MESSAGE = f"no AWS credentials found; {FIX}"


def missing(err: BaseException) -> bool:
    """True when `err` means botocore found no credentials (or only half of a key pair)."""
    try:
        from botocore.exceptions import NoCredentialsError, PartialCredentialsError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return False
    return isinstance(err, (NoCredentialsError, PartialCredentialsError))
