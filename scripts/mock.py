"""`make mock`: the API served from the spec's examples alone, for front-end teams: no database, no
controllers, answering as the service does where the spec says how:

- each operation answers the example of the status the service gives a first request (`201` for a
  create, `204` for a delete, else its lowest `2xx`), with the headers the spec names: `Location` of
  the new resource, an `ETag` (strong for a resource, weak for a page; `If-None-Match` with it is `304`);
- a path parameter other than its documented example names no row: `404`, as the service answers;
- requests are validated by the service's own validators (field-naming `400`s, the text rule), the
  secured operations take any bearer token (a missing one is `401`), and every error is the service's
  problem+json (errors.py);
- CORS as the service answers it, for the origins of `CORS_ORIGINS` / `[API] cors_origins`.

    make mock              # http://localhost:8081/api/ui/ (MOCK_PORT to change)
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import connexion  # noqa: E402
import uvicorn  # noqa: E402
from connexion.lifecycle import ConnexionResponse  # noqa: E402
from connexion.middleware import MiddlewarePosition  # noqa: E402
from connexion.mock import MockResolver  # noqa: E402
from connexion.options import SwaggerUIOptions  # noqa: E402

from swagger_server import errors, validation  # noqa: E402
from swagger_server.app import load_spec  # noqa: E402
from swagger_server.config import load_settings  # noqa: E402
from swagger_server.pipeline.gate import ProblemCORS  # noqa: E402


def _status(operation) -> int:
    """What the service answers a first request with: 201 for a create, else the lowest 2xx."""
    codes = sorted(int(code) for code in operation.responses if code.isdigit() and code.startswith("2"))
    return 201 if 201 in codes else codes[0]


def _unknown_id(operation, kwargs: dict) -> str | None:
    """The first path parameter whose value is not its documented example (no row has it here)."""
    for parameter in operation.parameters:
        if parameter.get("in") != "path" or "example" not in parameter:
            continue
        given = kwargs.get(parameter["name"])
        if given is not None and str(given) != str(parameter["example"]):
            return f"{parameter['name']} {given}"
    return None


class ExampleResolver(MockResolver):
    """Connexion's MockResolver, answering `application/json` as the service does (module docstring)."""

    def mock_operation(self, operation, *args, **kwargs):
        unknown = _unknown_id(operation, kwargs)
        if unknown is not None:
            raise errors.NotFound(f"{unknown} not found (the mock knows the spec's examples only)")
        status = _status(operation)
        body, status = operation.example_response(status_code=status, content_type="application/json")
        if status == 204:
            return ConnexionResponse(status_code=204)
        text = json.dumps(body)
        headers = {}
        declared = operation.responses.get(str(status), {}).get("headers", {})
        if "ETag" in declared:
            digest = hashlib.sha256(text.encode()).hexdigest()[:16]
            weak = isinstance(body, dict) and "items" in body
            headers["ETag"] = f'W/"{digest}"' if weak else f'"{digest}"'
            if headers["ETag"] in connexion.request.headers.get("if-none-match", ""):
                return ConnexionResponse(status_code=304, headers=headers)
        if "Location" in declared and isinstance(body, dict) and "id" in body:
            headers["Location"] = f"/api{operation.path.split('{')[0].rstrip('/')}/{body['id']}"
        return ConnexionResponse(status_code=status, body=text, content_type="application/json", headers=headers)


def any_token(token: str) -> dict:
    """Every bearer token is valid in the mock, with every scope."""
    return {"sub": "mock", "scope": ["read", "write", "admin"]}


def mock_app() -> connexion.AsyncApp:
    spec = load_spec()
    spec["components"]["securitySchemes"]["bearerAuth"]["x-bearerInfoFunc"] = "scripts.mock.any_token"
    api = load_settings().api
    app = connexion.AsyncApp(__name__, swagger_ui_options=SwaggerUIOptions(swagger_ui_path="/ui"))
    app.add_middleware(
        ProblemCORS,
        position=MiddlewarePosition.BEFORE_EXCEPTION,
        allow_origins=list(api.cors_origins),
        allow_methods=["GET", "POST", "PATCH", "DELETE", "OPTIONS"],
        allow_headers=["Authorization", "Content-Type", "Idempotency-Key", "X-Request-ID", "X-Consistency-Token"],
        expose_headers=["Location", "ETag", "Retry-After", "X-Request-ID", "WWW-Authenticate"],
        max_age=600,
    )
    app.add_api(
        spec,
        base_path="/api",
        resolver=ExampleResolver(mock_all=True),
        strict_validation=True,
        validator_map=validation.validator_map(),
        uri_parser_class=validation.StrictURIParser,
    )
    errors.register(app)
    return app


if __name__ == "__main__":
    logging.getLogger("connexion.security").setLevel(logging.ERROR)  # "no default implementation for openIdConnect"
    port = int(os.environ.get("MOCK_PORT", "8081"))
    print(f"  Mock API (the spec's examples):  http://localhost:{port}/api/ui/", flush=True)
    uvicorn.run(mock_app(), host=os.environ.get("MOCK_HOST", "127.0.0.1"), port=port, log_level="warning")
