"""The endpoint's bearer-token check and token sources (ray_cluster/auth.py)."""

from __future__ import annotations

import pytest

from ray_cluster.auth import TokenSourceError, bearer_ok, load_token

TOKEN = "tok-123"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer",
        "Bearer ",
        "Bearer nope",
        "Basic tok-123",
        "Token tok-123",
        "tok-123",
        "Bearer tok-1234",
    ],
)
def test_anything_but_the_bearer_token_is_refused(header):
    assert bearer_ok(header, TOKEN) is False


@pytest.mark.parametrize("header", ["Bearer tok-123", "bearer tok-123", "BEARER tok-123", "Bearer   tok-123"])
def test_the_bearer_token_is_accepted_as_rfc_6750_writes_it(header):
    # the scheme is case-insensitive and one or more spaces separate it from the token (RFC 7235)
    assert bearer_ok(header, TOKEN) is True


def test_token_from_the_named_env_var_and_one_line_errors_naming_it(monkeypatch):
    monkeypatch.setenv("LLMF_T", "  s3cret \n")
    assert load_token("LLMF_T", "/no/such/file") == "s3cret"  # the env var wins, stripped
    monkeypatch.setenv("LLMF_T", "  ")
    with pytest.raises(
        TokenSourceError, match=r"^api_token_env: environment variable 'LLMF_T' is unset or empty$"
    ):
        load_token("LLMF_T")
    monkeypatch.delenv("LLMF_T")
    with pytest.raises(TokenSourceError, match="'LLMF_T' is unset"):
        load_token("LLMF_T")


def test_token_from_a_file_and_one_line_errors_naming_it(tmp_path):
    f = tmp_path / "token"
    f.write_text("file-tok\n")
    assert load_token(None, str(f)) == "file-tok"
    f.write_text(" \n")
    with pytest.raises(TokenSourceError, match=rf"^api_token_file: '{f}' is empty$"):
        load_token(None, str(f))
    missing = tmp_path / "absent"
    with pytest.raises(TokenSourceError, match=rf"^api_token_file: cannot read '{missing}': No such file"):
        load_token(None, str(missing))


def test_no_token_source_is_an_error_never_an_open_endpoint():
    with pytest.raises(TokenSourceError, match="^no token source: set api_token_env or api_token_file$"):
        load_token()
    with pytest.raises(TokenSourceError, match="^no token source"):
        load_token("", "")
