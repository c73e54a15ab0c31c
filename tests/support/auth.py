"""The tokens the tests' servers accept, in the forms tests send them."""

TOKEN = "test-token"  # a write token (no scope prefix): every server of the tests is given it
AUTH = {"Authorization": f"Bearer {TOKEN}"}  # for a client library's headers
AUTH_LINE = f"Authorization: Bearer {TOKEN}"  # for a raw request (tests/support/rawhttp.py)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}
