"""Request bodies are I-JSON (RFC 7493), parsed once, before FastAPI sees them.

Python's ``json`` accepts what the rest of the provider cannot handle:
``NaN``, ``Infinity`` and ``1e999999`` (non-finite floats made FastAPI's
422 answer unrenderable: HTTP 500 and a traceback per request), lone
surrogates (``"\\ud800"``: unencodable, the same 500), integers beyond
what a double holds exactly (RFC 8785 cannot canonicalise them), duplicate
names (which one wins depends on the parser), and nesting deep enough to
recurse. :func:`loads` refuses each with :class:`InvalidInput` (HTTP 400)
naming the reason; so does a body that is not UTF-8 or not JSON at all.

:class:`IJsonRoute` is the route class of every router (``provider/routes.py``):
a route with a body parses it here first (415 unless the Content-Type is
JSON), so FastAPI's own parser, which would turn every error into one
reason-less 400, only ever sees I-JSON.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any, NoReturn

from fastapi import Request
from fastapi.routing import APIRoute

from provider.errors import InvalidInput, UnsupportedMediaType

MAX_DEPTH = 16  # the deepest body is 2 levels ({"packets_sent": {"1": n}})
MAX_SAFE_INTEGER = 2**53 - 1  # RFC 7493 2.2
_SURROGATE = re.compile("[\ud800-\udfff]")


def _bad(reason: str, text: str) -> NoReturn:
    raise InvalidInput(f"body: {reason} ({text[:24]}); bodies are I-JSON, RFC 7493")


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        _bad("number out of range", text)
    return value


def _integer(text: str) -> int:
    # Length first: int() of thousands of digits is slow (and Python refuses over 4300).
    if len(text.lstrip("-")) > 16 or abs(int(text)) > MAX_SAFE_INTEGER:
        _bad("integer beyond +-(2**53 - 1)", text)
    return int(text)


def _not_a_number(text: str) -> NoReturn:
    _bad("not a number", text)


def _unique(pairs: list[tuple[str, Any]]) -> dict:
    result = dict(pairs)
    if len(result) != len(pairs):
        names = [name for name, _ in pairs]
        _bad("duplicate name", next(name for name in result if names.count(name) > 1))
    return result


def _check_tree(value: Any) -> None:
    """Depth and lone surrogates, without recursion (the parser's own depth is bounded by the recursion limit)."""
    stack = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            raise InvalidInput(f"body: nested deeper than {MAX_DEPTH} levels")
        if isinstance(node, dict):
            stack.extend((key, depth + 1) for key in node)
            stack.extend((item, depth + 1) for item in node.values())
        elif isinstance(node, list):
            stack.extend((item, depth + 1) for item in node)
        elif isinstance(node, str) and _SURROGATE.search(node):
            raise InvalidInput("body: a string holds a lone UTF-16 surrogate (\\ud800-\\udfff)")


def loads(raw: bytes) -> Any:
    """The I-JSON value of ``raw``; InvalidInput (HTTP 400) names why not."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"body: not UTF-8 (byte {exc.start})") from None
    try:
        value = json.loads(text, parse_float=_number, parse_int=_integer, object_pairs_hook=_unique,
                           parse_constant=_not_a_number)
    except json.JSONDecodeError as exc:
        raise InvalidInput(f"body: not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise InvalidInput(f"body: nested deeper than {MAX_DEPTH} levels") from None
    _check_tree(value)
    return value


def _is_json(content_type: str | None) -> bool:
    if not content_type:
        return True  # FastAPI reads a body without Content-Type as JSON too
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class IJsonRequest(Request):
    async def json(self) -> Any:
        if not hasattr(self, "_ijson"):
            self._ijson = loads(await self.body())
        return self._ijson


class IJsonRoute(APIRoute):
    """Routes whose body is parsed by :func:`loads` before FastAPI's parser (see the module doc)."""

    def get_route_handler(self):
        handler = super().get_route_handler()
        takes_body = self.body_field is not None

        async def route_handler(request: Request):
            request = IJsonRequest(request.scope, request.receive)
            if takes_body and await request.body():
                if not _is_json(request.headers.get("content-type")):
                    raise UnsupportedMediaType("body: Content-Type must be application/json")
                await request.json()  # InvalidInput here reaches the ProviderFault handler with its reason
            return await handler(request)

        return route_handler
