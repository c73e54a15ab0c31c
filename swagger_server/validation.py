"""Request validation on top of Connexion's: errors that name the field, hostile input refused as 400.

Connexion validates every request against the spec; these subclasses change what it does with bad
input, not what it checks:

- every error is an `InvalidRequest` (400 problem+json) with `field` naming the parameter or the
  body member at fault, and a message that quotes at most a short excerpt of the value;
- a body that is not UTF-8, not JSON, nested deeper than `MAX_DEPTH`, or holds a number literal
  longer than `MAX_NUMBER_DIGITS`, `NaN`/`Infinity`, or a NUL character in any string is refused
  before the schema is applied (PostgreSQL text cannot hold NUL; Python refuses integers of more
  than 4300 digits with a ValueError; deep nesting would exhaust the recursion limit);
- every string of a body is made NFC and must obey the text rule (text.py), or the body is refused;
- one jsonschema validator per parameter, built once. Connexion deep-copies the schema and builds
  a new validator on every request, which cost about 8% of a worker's CPU on GET /customers/{id};
- `pattern` means what JSON Schema says it means: an ECMA-262 regular expression (the `regress`
  library, with the `u` flag), not Python's `re`, whose `$` also matches before a trailing newline;
- numbers in the query are ASCII digits (Python's `int()` also reads "١٢", " 12" and "1_2"), and a
  parameter that is not an array may be given once (Connexion would silently take the last);
- one reading: the parameters and the body validated here are the ones the handler gets (stored in
  the request's context, `state.request_context`, and handed to Connexion's Flask-side request by patches.py), so no
  second parser can read the request differently.
"""

from __future__ import annotations

import asyncio
import copy
import datetime
import functools
import json
import re
import typing as t

import regress
from connexion.datastructures import MediaTypeDict
from connexion.json_schema import Draft4RequestValidator
from connexion.uri_parsing import OpenAPIURIParser
from connexion.utils import is_null, is_nullable
from connexion.validators import VALIDATOR_MAP, JSONRequestBodyValidator, ParameterValidator
from jsonschema import Draft4Validator, ValidationError, validators

from swagger_server import sizes
from swagger_server import text as text_rule
from swagger_server.errors import ApiError, PayloadTooLarge, excerpt
from swagger_server.sizes import NUMBER_BYTES, most_bytes, over_size
from swagger_server.state import request_context

# Connexion's format checker, with a real `email` check. jsonschema's only asks for an "@"; the spec's
# pattern fixes the form (dot-atom @ host name) and this adds RFC 5321's lengths (local part 64,
# domain 253, label 63), as strict validators (and Schemathesis) apply them.
FORMAT_CHECKER = copy.deepcopy(Draft4Validator.FORMAT_CHECKER)


@FORMAT_CHECKER.checks("email")
def _email(value) -> bool:
    if not isinstance(value, str):
        return True
    local, at, domain = value.rpartition("@")
    return (
        bool(at)
        and 1 <= len(local) <= 64
        and 1 <= len(domain) <= 253
        and all(1 <= len(label) <= 63 for label in domain.split("."))
    )


@FORMAT_CHECKER.checks("date", raises=ValueError)
def _date(value) -> bool:
    """RFC 3339 full-date (2026-01-31); Draft 4's checker has no `date` at all."""
    if not isinstance(value, str):
        return True
    if len(value) != 10 or value[4] != "-" or value[7] != "-" or not value.replace("-", "").isdigit():
        return False
    datetime.date.fromisoformat(value)
    return True


MAX_DEPTH = 32  # the deepest body the spec describes is 3 levels
MAX_NUMBER_DIGITS = NUMBER_BYTES  # int64 has 19 digits; anything longer is refused by the schema anyway
# A body may be twice its schema's largest compact form (sizes.most_bytes) plus this much whitespace.
WHITESPACE_BYTES = 4096


class InvalidRequest(ApiError):
    """The request does not match the contract. `field` names what is wrong."""


@functools.lru_cache(maxsize=512)
def ecma_regex(pattern: str) -> regress.Regex:
    """The spec's pattern as an ECMA-262 regular expression (unicode mode), compiled once."""
    return regress.Regex(pattern, "u")


def _ecma_pattern(validator, pattern, instance, schema):
    """JSON Schema's `pattern` keyword with ECMA-262 semantics (jsonschema's uses Python's `re`)."""
    if validator.is_type(instance, "string") and ecma_regex(pattern).find(instance) is None:
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


EcmaRequestValidator = validators.extend(Draft4RequestValidator, {"pattern": _ecma_pattern})
EcmaValidator = validators.extend(Draft4Validator, {"pattern": _ecma_pattern})

_INTEGER = re.compile(r"[+-]?[0-9]+")
_NUMBER = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class StrictURIParser(OpenAPIURIParser):
    """Connexion's URI parser, refusing what Python would read as a number but the spec would not:
    non-ASCII digits, spaces, underscores, over-long literals; and a repeated single parameter."""

    def resolve_params(self, params, _in):
        for name, values in params.items():
            schema = self.param_schemas.get(name)
            if not schema:
                continue
            raw = [values] if _in == "path" else values
            kind = schema.get("type")
            if kind != "array" and len(raw) > 1:
                raise InvalidRequest(f"{_in} parameter '{excerpt(name, 40)}' may be given only once", field=name)
            if kind in ("integer", "number"):
                grammar = _INTEGER if kind == "integer" else _NUMBER
                for value in raw:
                    if isinstance(value, str) and not (len(value) <= MAX_NUMBER_DIGITS and grammar.fullmatch(value)):
                        raise InvalidRequest(
                            f"{_in} parameter '{name}': '{excerpt(value, 40)}' is not {'an integer' if kind == 'integer' else 'a number'}"
                            " (ASCII digits)",
                            field=name,
                        )
        return super().resolve_params(params, _in)


def _location(path) -> str:
    """`lines[0].quantity` from a jsonschema error path."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _message(error: ValidationError) -> str:
    """jsonschema's message, with the offending value cut to a short excerpt (and no regex dump)."""
    value = error.instance
    shown = f"'{excerpt(value, 40)}'" if isinstance(value, str) else excerpt(value, 40)
    if error.validator == "pattern":
        return f"{shown} is not in the required form"
    if error.validator in (
        "maxLength",
        "minLength",
        "format",
        "type",
        "enum",
        "maxItems",
        "minItems",
        "maximum",
        "minimum",
        "minProperties",
    ):
        full = repr(value)
        if error.message.startswith(full):
            return (shown + error.message[len(full) :])[:300]
    return excerpt(error.message, 300)


class ProblemJSONBodyValidator(JSONRequestBodyValidator):
    """Connexion's JSON body validator: hostile bodies refused, errors naming the member at fault."""

    _cache: dict[int, tuple[dict, Draft4Validator]] = {}  # each app's subclass has its own (validator_map)

    def _compiled(self) -> tuple:
        """(schema, its validator, the most bytes a valid body may take, its free-text members), made once
        per schema."""
        cached = self._cache.get(id(self._schema))
        if cached is None or cached[0] is not self._schema:
            most = most_bytes(self._schema)
            cached = (
                self._schema,
                EcmaRequestValidator(self._schema, format_checker=FORMAT_CHECKER),
                None if most is None else 2 * most + WHITESPACE_BYTES,
                text_rule.line_fields(self._schema),
            )
            self._cache[id(self._schema)] = cached
        return cached

    @property
    def _validator(self):
        return self._compiled()[1]

    async def _parse(self, stream: t.AsyncGenerator[bytes, None], scope) -> t.Any:
        raw = b"".join([chunk async for chunk in stream])
        most = self._compiled()[2]
        if most is not None and len(raw) > most:  # before a parser reads it: the work is the spec's
            raise PayloadTooLarge(
                f"the request body is {len(raw)} bytes; no valid body of this operation takes more than {most}",
                field="body",
            )
        # Parsed and checked in a thread, off the event loop: a valid order of 100 lines is 6 ms of
        # jsonschema, which on the loop would be 6 ms of every other connection's wait.
        body = await asyncio.to_thread(self._read, raw)
        request_context(scope)["body"] = body  # the object validated is the object the handler gets
        return body

    def _read(self, raw: bytes) -> t.Any:
        """The body parsed, its text made canonical, checked against the schema; InvalidRequest naming
        the field otherwise. Its cost is bounded by the body's size, bounded by the schema's."""
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidRequest(f"the request body is not valid UTF-8 (byte {exc.start})", field="body") from None
        if not text.strip():
            return None
        try:
            body = json.loads(
                text, parse_int=sizes.bounded_int, parse_float=sizes.bounded_float, parse_constant=sizes.no_constant
            )
        except RecursionError:
            raise InvalidRequest(f"the request body nests deeper than {MAX_DEPTH} levels", field="body") from None
        except ValueError as exc:
            reason = exc.msg if isinstance(exc, json.JSONDecodeError) else str(exc)
            where = f" at line {exc.lineno} column {exc.colno}" if isinstance(exc, json.JSONDecodeError) else ""
            raise InvalidRequest(f"the request body is not valid JSON: {reason}{where}", field="body") from None
        if (oversize := over_size(body, self._schema)) is not None:  # before anything walks the body
            raise InvalidRequest(oversize[1], field=oversize[0])
        found = sizes.hostile(body, MAX_DEPTH)
        if found is not None:
            what, where = found
            message = {
                "depth": f"the request body nests deeper than {MAX_DEPTH} levels",
                "nul": "strings may not contain NUL (\\u0000) characters",
                "surrogate": "strings may not contain unpaired UTF-16 surrogates (\\ud800-\\udfff)",
            }[what]
            raise InvalidRequest(message, field=excerpt(where, 60) or "body")
        try:
            body = text_rule.canonical_strings(body, self._compiled()[3])
        except text_rule.TextRefused as exc:
            field = excerpt(exc.where, 60) or "body"
            raise InvalidRequest(f"'{field}' {exc.reason}", field=field) from None
        if body is not None:
            self._check(body)
        return body

    def _validate(self, body: t.Any) -> None:
        """The schema was applied by `_read`; what is left is an empty body where one is required."""
        if not self._nullable and body is None:
            raise InvalidRequest("the request body must not be empty", field="body")

    def _check(self, body: t.Any) -> None:
        error = next(iter(sorted(self._validator.iter_errors(body), key=lambda e: len(e.path))), None)
        if error is None:
            return
        field = _location(error.path)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            field = f"{field}.{missing}" if field else missing
        if error.validator == "additionalProperties" and isinstance(error.instance, dict):
            allowed = set(error.schema.get("properties", {}))
            extra = next((k for k in error.instance if k not in allowed), "")
            raise InvalidRequest(
                f"unknown member {excerpt(extra, 40)}" + (f" in '{field}'" if field else ""),
                field=(f"{field}." if field else "") + excerpt(extra, 40),
            )
        where = f"'{field}'" if field else "the body"
        raise InvalidRequest(f"{where}: {_message(error)}", field=field or "body")


# The keywords a parameter's schema may use for the fast check below (anything else: jsonschema only).
_SIMPLE_KEYWORDS = frozenset(
    (
        "type",
        "format",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "pattern",
        "enum",
        "nullable",
        "default",
        "example",
        "description",
    )
)
_UNCHECKED_FORMATS = frozenset((None, "int32", "int64", "float", "double"))  # no checker for these in Draft 4


def simple_check(schema: dict):
    """A function that says True only when `value` is valid against `schema`, for the scalar schemas
    of path and query parameters (a type, bounds, lengths, a pattern, an enum of strings); None when
    the schema uses anything else. It never says True where jsonschema would refuse: it is stricter
    (an integer is an `int`, never a float or a bool), and False only means "ask jsonschema", which
    decides and words the error. About 3% of a GET's CPU (jsonschema's iter_errors) before it."""
    if not isinstance(schema, dict) or not set(schema) <= _SIMPLE_KEYWORDS:
        return None
    kind, fmt = schema.get("type"), schema.get("format")
    if kind not in ("integer", "number", "string", "boolean") or fmt not in _UNCHECKED_FORMATS:
        return None
    low, high = schema.get("minimum"), schema.get("maximum")
    low_open, high_open = schema.get("exclusiveMinimum", False), schema.get("exclusiveMaximum", False)
    shortest, longest = schema.get("minLength"), schema.get("maxLength")
    pattern = ecma_regex(schema["pattern"]) if "pattern" in schema else None
    enum = schema.get("enum")
    if enum is not None and (kind != "string" or not all(isinstance(e, str) for e in enum)):
        return None
    allowed = frozenset(enum) if enum is not None else None
    types = {"integer": (int,), "number": (int, float), "string": (str,), "boolean": (bool,)}[kind]

    def check(value) -> bool:
        if type(value) not in types:
            return False
        if low is not None and (value <= low if low_open else value < low):
            return False
        if high is not None and (value >= high if high_open else value > high):
            return False
        if kind == "string":
            if (shortest is not None and len(value) < shortest) or (longest is not None and len(value) > longest):
                return False
            if pattern is not None and pattern.find(value) is None:
                return False
            if allowed is not None and value not in allowed:
                return False
        return True

    return check


class NamingParameterValidator(ParameterValidator):
    """Connexion's parameter validator, with errors naming the parameter (see the module docstring)."""

    # id(param) -> (param, its validator, its fast check or None); each app's subclass has its own (validator_map)
    _validators: dict[int, tuple] = {}

    @classmethod
    def validate_parameter(cls, parameter_type, value, param, param_name=None):
        if is_nullable(param) and is_null(value):
            return None
        if value is None:
            return f"missing {parameter_type} parameter '{param['name']}'" if param.get("required") else None
        if isinstance(value, str) and "\x00" in value:
            return f"{parameter_type} parameter '{param_name or param.get('name')}' contains a NUL character"
        # Keyed by the spec's own dict, which lives as long as the app; the dict is kept in the value
        # so its id cannot be reused by another object.
        cached = cls._validators.get(id(param))
        if cached is None or cached[0] is not param:
            schema = param.get("schema", param)
            cached = (param, EcmaValidator(schema, format_checker=FORMAT_CHECKER), simple_check(schema))
            cls._validators[id(param)] = cached
        if cached[2] is not None and cached[2](value):
            return None
        error = next(cached[1].iter_errors(value), None)
        if error is None:
            return None
        return f"{parameter_type} parameter '{param_name or param.get('name')}': {_message(error)}"

    def validate(self, scope):
        if not self.parameters and not scope.get("query_string"):
            # An operation without parameters, a request without a query: nothing to read or check
            # (Connexion would still build a request object and walk its headers and cookies).
            read = request_context(scope)
            read["query"], read["path"] = {}, {}
            return
        super().validate(scope)

    def validate_request(self, request):
        if self.strict_validation:
            extra = self.validate_query_parameter_list(request, security_params=self.security_query_params)
            if extra:
                name = excerpt(sorted(extra)[0], 40)
                raise InvalidRequest(f"unknown query parameter '{name}'", field=name)
        for location, get in (
            ("query", request.query_params.get),
            ("path", request.path_params.get),
            ("header", request.headers.get),
            ("cookie", request.cookies.get),
        ):
            for param in self.parameters.get(location, []):
                key = param["name"].replace("-", "_") if location == "path" else param["name"]
                error = self.validate_parameter(location, get(key), param)
                if error:
                    raise InvalidRequest(error, field=param["name"])
        # The handler gets these very values (patches.py), not a second parse of the URL.
        read = request_context(request.scope)
        read["query"] = request.query_params
        read["path"] = request.path_params


def validator_map() -> dict:
    """Connexion's `validator_map` for one app: the validators above, as classes of that app's own,
    so that their caches of compiled schemas belong to the app (two apps share nothing)."""
    parameter = type("AppParameterValidator", (NamingParameterValidator,), {"_validators": {}})
    body = type("AppJSONBodyValidator", (ProblemJSONBodyValidator,), {"_cache": {}})
    return {"parameter": parameter, "body": MediaTypeDict({**VALIDATOR_MAP["body"], "*/*json": body})}
