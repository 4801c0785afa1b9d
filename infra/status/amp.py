"""The stack's metrics workspace (Amazon Managed Service for Prometheus) as a Prometheus query API:
every request signed with SigV4 for the `aps` service (botocore's own signer), with the operator's
credentials. AMP answers Prometheus' `/api/v1/query` at `<metrics_query_url>/api/v1/query`, so
the same PromQL (infra.local.live) reads the local Prometheus and the stack's AMP workspace."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from infra.local.prometheus import Fetch, PromError

SERVICE = "aps"


def sigv4_fetch(credentials: Any, region: str) -> Fetch:
    """A `Fetch` (infra.local.prometheus) that signs each GET with SigV4 for AMP in `region`.
    `credentials`: botocore credentials (a boto3 Session's get_credentials())."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest

    def fetch(url: str, timeout: float) -> Any:
        if credentials is None:
            raise PromError(
                f"{url.split('?', 1)[0]}: no AWS credentials to sign the query with (AMP takes SigV4)"
            )
        req = AWSRequest(method="GET", url=url)
        # Signed now: SigV4 signatures expire after 5 minutes and carry the request's time.
        SigV4Auth(credentials.get_frozen_credentials(), SERVICE, region).add_auth(req)
        prepared = urllib.request.Request(url, headers=dict(req.headers.items()), method="GET")
        try:
            with urllib.request.urlopen(prepared, timeout=timeout) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            body = e.read().decode(errors="replace")
            try:
                doc = json.loads(body)
                body = doc.get("error") or doc.get("message") or doc.get("Message") or body
            except ValueError:
                pass
            raise PromError(f"HTTP {e.code}: {str(body).strip()[:300]}") from None
        except OSError as e:
            raise PromError(f"{url.split('?', 1)[0]}: {e}") from None

    return fetch
