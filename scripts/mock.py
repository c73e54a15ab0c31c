"""`make mock`: the API served from the spec's examples alone, for front-end teams: no database, no
controllers. Connexion's mock mode (MockResolver) answers every operation with the example of its
first documented response; requests are validated against the spec as the real service does, and
the secured operations take any bearer token (a missing one is 401, as for real).

    make mock              # http://localhost:8081/api/ui/ (MOCK_PORT to change)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import connexion  # noqa: E402
import uvicorn  # noqa: E402
from connexion.lifecycle import ConnexionResponse  # noqa: E402
from connexion.mock import MockResolver  # noqa: E402
from connexion.options import SwaggerUIOptions  # noqa: E402

from swagger_server.app import load_spec  # noqa: E402


class ExampleResolver(MockResolver):
    """Connexion's MockResolver, answering `application/json` (our operations also document
    `application/problem+json` for their errors, and Connexion will not guess between the two)."""

    def mock_operation(self, operation, *args, **kwargs):
        body, status = super().mock_operation(operation, *args, **kwargs)
        return ConnexionResponse(status_code=status, body=json.dumps(body), content_type="application/json")


def any_token(token: str) -> dict:
    """Every bearer token is valid in the mock, with both scopes."""
    return {"sub": "mock", "scope": ["read", "write"]}


def mock_app() -> connexion.AsyncApp:
    spec = load_spec()
    spec["components"]["securitySchemes"]["bearerAuth"]["x-bearerInfoFunc"] = "scripts.mock.any_token"
    app = connexion.AsyncApp(__name__, swagger_ui_options=SwaggerUIOptions(swagger_ui_path="/ui"))
    app.add_api(spec, base_path="/api", resolver=ExampleResolver(mock_all=True), strict_validation=True)
    return app


if __name__ == "__main__":
    port = int(os.environ.get("MOCK_PORT", "8081"))
    print(f"  Mock API (the spec's examples):  http://localhost:{port}/api/ui/", flush=True)
    uvicorn.run(mock_app(), host=os.environ.get("MOCK_HOST", "127.0.0.1"), port=port, log_level="warning")
