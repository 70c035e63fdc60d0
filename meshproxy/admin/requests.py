"""
What the admin API's handlers share to read requests and write answers:
JSON answers and refusals, bounded bodies (rules text, JSON objects, a
policy), versions as ETags and If-Match, query values.
"""

from __future__ import annotations

import json
from typing import Any

from twisted.web.iweb import IRequest

RULES_LIMIT = 256 * 1024
"""The largest rules text C{PUT} or a dry run accepts, in bytes."""

JSON_LIMIT = 64 * 1024
"""The largest JSON request body the API accepts, in bytes."""

_TRUE = frozenset({b"1", b"true", b"yes"})

JSON_TYPE = "application/json"
"""The body type of every mutating route unless it declares another."""

TEXT_TYPE = "text/plain"
"""The body type of the routes that take rules text."""


_PHRASES = {421: b"Misdirected Request", 428: b"Precondition Required"}


def _json(request: IRequest, body: Any, code: int = 200) -> bytes:
    """
    Set up C{request} for a JSON answer and return the encoded body.

    @param request: the request being answered.
    @param body: a JSON-serialisable value.
    @param code: the HTTP status.
    @return: the UTF-8 JSON text followed by a newline.
    """
    request.setResponseCode(code, _PHRASES.get(code))
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8") + b"\n"


class _Refusal(Exception):
    """
    Raised inside a handler to answer with a JSON error right away.

    @ivar code: the HTTP status.
    @ivar body: the JSON-serialisable answer.
    @ivar headers: extra C{(name, value)} byte-string headers.
    """

    def __init__(
        self, code: int, body: dict[str, Any], headers: tuple[tuple[bytes, bytes], ...] = ()
    ) -> None:
        super().__init__(code, body)
        self.code = code
        self.body = body
        self.headers = headers


def _etag(version: str) -> bytes:
    """
    The C{ETag} header value of a rules version: the version in quotes.
    """
    return b'"' + version.encode("ascii") + b'"'


def _readBody(request: IRequest, limit: int) -> bytes:
    """
    The request body, refused with 413 if longer than C{limit} bytes.
    """
    length = request.getHeader(b"content-length")
    if length is not None and length.strip().isdigit() and int(length) > limit:
        raise _Refusal(413, {"error": f"body too large (at most {limit} bytes)"})
    content = request.content
    body = b"" if content is None else content.read(limit + 1)
    if len(body) > limit:
        raise _Refusal(413, {"error": f"body too large (at most {limit} bytes)"})
    return body


def _readText(request: IRequest) -> str:
    """
    A rules text from the request body: UTF-8, at most L{RULES_LIMIT} bytes.
    """
    try:
        return _readBody(request, RULES_LIMIT).decode("utf-8")
    except UnicodeDecodeError:
        raise _Refusal(400, {"error": "the rules must be UTF-8 text"}) from None


def _readJSON(request: IRequest, *fields: str) -> dict[str, str]:
    """
    A JSON object from the request body (at most L{JSON_LIMIT} bytes) whose
    C{fields} are all non-empty strings.

    @return: the object.
    @raise _Refusal: 413 when too large, 400 when not such an object.
    """
    body = _readBody(request, JSON_LIMIT)
    try:
        value = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise _Refusal(400, {"error": f"the body is not JSON: {e}"}) from None
    if not isinstance(value, dict):
        raise _Refusal(400, {"error": "the body must be a JSON object"})
    for field in fields:
        if field not in value:
            raise _Refusal(400, {"error": f"missing field {field!r}"})
        if not isinstance(value[field], str) or not value[field]:
            raise _Refusal(400, {"error": f"field {field!r} must be a non-empty string"})
    return value


def _rejectDuplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """
    A JSON object's members as a dict, refusing a key given twice (which
    C{json} would otherwise resolve silently, keeping the last).
    """
    value = {}
    for key, item in pairs:
        if key in value:
            raise ValueError(f"duplicate key {json.dumps(key)}")
        value[key] = item
    return value


def _readPolicy(request: IRequest) -> Any:
    """
    A policy from the request body: JSON (at most L{JSON_LIMIT} bytes),
    without a key given twice. Its shape is checked by the policy store.

    @raise _Refusal: 413 when too large, 400 C{{"error", "problems"}} when
        not JSON.
    """
    body = _readBody(request, JSON_LIMIT)
    try:
        return json.loads(body.decode("utf-8"), object_pairs_hook=_rejectDuplicates)
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        message = f"the body is not JSON: {e}"
        raise _Refusal(400, {"error": message, "problems": [message]}) from None


def _ifMatch(request: IRequest, kind: str) -> str | frozenset[str]:
    """
    The versions an C{If-Match} header accepts: C{"*"} or a set of versions.

    Weak tags (C{W/"..."}) never match (RFC 9110, section 13.1.1); an
    unquoted version is taken as if it were quoted, for hand-made calls.

    @param kind: what the change is of (C{"rules"}, C{"policy"}), for the
        message.
    @raise _Refusal: 428 without the header.
    """
    raw = request.getHeader(b"if-match")
    if raw is None or not raw.strip():
        raise _Refusal(428, {
            "error": f"If-Match required: send the ETag of the {kind} your change "
                     f"is based on (GET the {kind} to read it)",
        })
    try:
        value = raw.decode("ascii").strip()
    except UnicodeDecodeError:
        raise _Refusal(400, {"error": "If-Match must be ASCII"}) from None
    if value == "*":
        return "*"
    versions = set()
    for tag in value.split(","):
        tag = tag.strip()
        if not tag or tag.startswith("W/"):
            continue
        if len(tag) >= 2 and tag[0] == tag[-1] == '"':
            tag = tag[1:-1]
        versions.add(tag)
    return frozenset(versions)


def _queryValue(request: IRequest, key: str) -> str | None:
    """
    A query parameter given at most once, as text.

    @raise _Refusal: 400 if repeated or not UTF-8.
    """
    values = request.args.get(key.encode("ascii"))
    if not values:
        return None
    if len(values) > 1:
        raise _Refusal(400, {"error": f"give {key}= only once"})
    try:
        return values[0].decode("utf-8")
    except UnicodeDecodeError:
        raise _Refusal(400, {"error": f"{key}= must be UTF-8"}) from None


def _reason(error: BaseException) -> str:
    """
    The message of an exception, without the quotes C{str(KeyError)} adds.
    """
    if error.args and isinstance(error.args[0], str):
        return error.args[0]
    return str(error)


def _answer(request: IRequest, refusal: _Refusal) -> bytes:
    """
    Answer C{request} with C{refusal}: its status, headers and JSON body.
    """
    for header, value in refusal.headers:
        request.setHeader(header, value)
    return _json(request, refusal.body, refusal.code)


def _show(value: bytes, limit: int = 100) -> str:
    """
    A header value as text for an error message, cut at C{limit} characters.
    """
    text = value.decode("latin-1")
    return text if len(text) <= limit else text[:limit] + "\u2026"
