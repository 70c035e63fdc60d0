"""
The domain checks of configuration values: durations, name paths,
addresses, networks, host names and dtab text (endpoint descriptions are
in L{meshproxy.config.endpoints}).

Each check takes a raw value (as YAML gives it), returns the value to keep
(sometimes normalised) and raises L{Invalid} with a message in the proxy's
own words, without the key path: the caller knows where the value was.
Nothing here knows about sections or key paths, so the checks can be used
(and tested) on their own.
"""

import difflib
import ipaddress
import json
import math
import os
import re
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import SplitResult, urlsplit

__all__ = [
    "Invalid",
    "address",
    "allowedHost",
    "boundName",
    "checkRange",
    "choice",
    "directory",
    "duration",
    "headerName",
    "hostName",
    "namerPrefix",
    "network",
    "nonEmptyString",
    "parseDuration",
    "path",
    "routerName",
    "rules",
    "serviceName",
    "show",
    "showSeconds",
    "string",
    "suggest",
]


class Invalid(ValueError):
    """
    A value is not valid; the message says why, in the user's terms.
    """


# -- showing values in messages -----------------------------------------------


def show(value: object) -> str:
    """
    Show a YAML value in a message: scalars as YAML would write them,
    containers by their kind.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        # (cut too: YAML reads an integer of hundreds of digits as it is)
        return _cut(repr(value))
    if isinstance(value, str):
        return json.dumps(_cut(value), ensure_ascii=False)
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    # Other YAML 1.1 types: timestamps, binary, sets.
    return f"a {type(value).__name__}"


def _cut(text: str) -> str:
    """
    C{text} as a message shows it: past 60 characters, its first 57 and
    C{"..."}.
    """
    return text if len(text) <= 60 else text[:57] + "..."


def showSeconds(seconds: float) -> str:
    """
    Show a duration in seconds as C{"1.5s"}.
    """
    return f"{seconds:g}s"


def suggest(word: str, candidates: Iterable[str]) -> str:
    """
    @return: C{' (did you mean "x"?)'} for the candidate closest to C{word},
        ignoring case (C{roundrobin}, C{maxuri}), or C{""} if none is close.
    """
    byLower = {candidate.lower(): candidate for candidate in candidates}
    matches = difflib.get_close_matches(word.lower(), sorted(byLower), n=1, cutoff=0.6)
    return f" (did you mean {json.dumps(byLower[matches[0]])}?)" if matches else ""


# -- scalars ------------------------------------------------------------------


def string(value: Any) -> str:
    """
    A string, as it is.
    """
    if not isinstance(value, str):
        raise Invalid(f"expected a string, got {show(value)}")
    return value


def nonEmptyString(value: Any) -> str:
    """
    A string with at least one character.
    """
    if not string(value):
        raise Invalid("must not be empty")
    return value


def _bound(number: float | None) -> str:
    # An integer bound in full (2147483647, not 2.14748e+09).
    if isinstance(number, int):
        return str(number)
    return f"{number:g}"


def checkRange(
    value: float,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusiveMinimum: bool = False,
) -> None:
    """
    Check that a number is within bounds.

    @param exclusiveMinimum: whether C{minimum} itself is too small.
    @raise Invalid: if it is not.
    """
    shown = show(value)
    if exclusiveMinimum:
        assert minimum is not None
        if value <= minimum or (maximum is not None and value > maximum):
            upTo = "" if maximum is None else f" and at most {_bound(maximum)}"
            raise Invalid(f"must be more than {_bound(minimum)}{upTo}, got {shown}")
    elif minimum is not None and maximum is not None:
        if not minimum <= value <= maximum:
            raise Invalid(f"must be between {_bound(minimum)} and {_bound(maximum)}, got {shown}")
    elif minimum is not None and value < minimum:
        raise Invalid(f"must be at least {_bound(minimum)}, got {shown}")
    elif maximum is not None and value > maximum:
        raise Invalid(f"must be at most {_bound(maximum)}, got {shown}")


def choice(value: Any, options: Iterable[str]) -> str:
    """
    One of a few fixed words, spelt exactly.
    """
    options = list(options)
    if not isinstance(value, str) or value not in options:
        listed = ", ".join(json.dumps(option) for option in options)
        hint = suggest(value, options) if isinstance(value, str) else ""
        raise Invalid(f"expected one of {listed}, got {show(value)}{hint}")
    return value


# -- durations ----------------------------------------------------------------

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_UNITS = "ms|s|m|h"

DURATION_PATTERN = f"^{_NUMBER}({_UNITS})$"
"""What a duration looks like, for the JSON Schema."""

_DURATION = re.compile(f"(?P<number>{_NUMBER})(?P<unit>{_UNITS})")
_BARE_NUMBER = re.compile(_NUMBER)
_SECONDS_PER_UNIT = {"s": 1.0, "m": 60.0, "h": 3600.0}


def parseDuration(text: str) -> float:
    """
    Parse a duration written with a unit: C{"250ms"}, C{"10s"}, C{"1.5s"},
    C{"5m"}, C{"1h"}, C{"0s"}.

    @param text: the duration; a non-negative decimal number immediately
        followed by one of C{ms}, C{s}, C{m}, C{h}.
    @return: the duration in seconds.
    @raise ValueError: for anything else (bare numbers, negative numbers,
        unknown units, non-strings), with a message like
        C{expected a duration like "2s", got "fast"}.
    """
    match = _DURATION.fullmatch(text) if isinstance(text, str) else None
    if match is None:
        message = f'expected a duration like "2s", got {show(text)}'
        if _isBareNumber(text) and len(str(text)) <= 57:
            # (the hint repeats the number whole: only a short one)
            message += f' (add a unit: "{text}s")'
        raise Invalid(message)
    number = float(match["number"])
    if match["unit"] == "ms":
        # Divide rather than multiply by 0.001, so "250ms" is exactly 0.25.
        seconds = number / 1000.0
    else:
        seconds = number * _SECONDS_PER_UNIT[match["unit"]]
    if not math.isfinite(seconds):
        # Hundreds of digits, read as infinity.
        raise Invalid(f"too long a duration, got {show(text)}")
    return seconds


def finite(value: int | float) -> float | None:
    """
    C{value} as a finite float, or L{None} (infinite, not a number, or an
    integer past a float's range).
    """
    try:
        number = float(value)
    except OverflowError:
        return None
    return number if math.isfinite(number) else None


def _isBareNumber(value: object) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        # (not math.isfinite, which cannot take an integer past a float's range)
        return value >= 0
    if isinstance(value, float):
        return math.isfinite(value) and value >= 0
    return isinstance(value, str) and _BARE_NUMBER.fullmatch(value) is not None


def duration(value: Any, positive: bool, seconds: bool = False) -> float:
    """
    A duration, in seconds.

    @param value: the text (C{"10s"}); or, with C{seconds}, also a number of
        seconds (for values built in Python rather than read from a file).
    @param positive: whether C{0s} is refused.
    """
    if seconds and isinstance(value, (int, float)) and not isinstance(value, bool):
        result = finite(value)
        if result is None or result < 0:
            raise Invalid(f"expected a duration in seconds, got {show(value)}")
    else:
        result = parseDuration(value)
    if positive and result <= 0:
        raise Invalid(f"must be longer than 0s, got {show(value)}")
    return result


# -- names --------------------------------------------------------------------

SEGMENT_PATTERN = r"[A-Za-z0-9_.:-]+"
"""One segment of a name path, and a service name."""

ROUTER_NAME_PATTERN = r"[A-Za-z0-9_-]+"
"""A router name."""

_SEGMENT = re.compile(SEGMENT_PATTERN)
_ROUTER_NAME = re.compile(ROUTER_NAME_PATTERN)
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
_INET_FORM = '"/$/inet/<host>/<port>"'


def _checkSegments(text: str, segments: list[str] | None) -> None:
    if segments is None:
        raise Invalid(f'expected a path starting with "/", got {show(text)}')
    for segment in segments:
        if not segment:
            raise Invalid(f"empty path segment in {show(text)}")
        if not _SEGMENT.fullmatch(segment):
            raise Invalid(
                f"path segment {show(segment)} in {show(text)} may only hold"
                " letters, digits and _ . : -"
            )


def path(value: Any, allowRoot: bool = True) -> str:
    """
    A name path such as C{/svc}: segments of C{[A-Za-z0-9_.:-]}, none empty.

    @param allowRoot: whether C{/} alone is accepted.
    """
    text = string(value)
    if allowRoot and text == "/":
        return text
    _checkSegments(text, text.split("/")[1:] if text.startswith("/") else None)
    return text


def namerPrefix(value: Any) -> str:
    """
    The prefix a namer owns, under C{/#/}.
    """
    text = string(value)
    if not text.startswith("/#/"):
        raise Invalid(f'must start with "/#/", got {show(text)}')
    _checkSegments(text, text.split("/")[2:])
    return text


def boundName(value: Any) -> str:
    """
    A bound name: under a namer (C{/#/fs/users}; which namer is checked
    across sections) or a fixed address (C{/$/inet/127.0.0.1/8080}).
    """
    text = string(value)
    if text.startswith("/#/"):
        _checkSegments(text, text.split("/")[2:])
        return text
    if text.startswith("/$/"):
        segments = text.split("/")[2:]
        if len(segments) != 3 or segments[0] != "inet":
            raise Invalid(f"expected {_INET_FORM}, got {show(text)}")
        _checkSegments(text, segments)
        _port(segments[2], minimum=1)
        return text
    raise Invalid(
        f'expected a bound name like "/#/fs/users" or {_INET_FORM}, got {show(text)}'
    )


def serviceName(value: Any) -> str:
    """
    The name of a service of a static namer.
    """
    if not isinstance(value, str) or not _SEGMENT.fullmatch(value):
        raise Invalid(
            f"a service name may only hold letters, digits and _ . : -, got {show(value)}"
        )
    return value


def routerName(value: Any) -> str:
    """
    A router's name: it appears in metrics labels and admin URLs.
    """
    text = string(value)
    if not _ROUTER_NAME.fullmatch(text):
        raise Invalid(f"may only hold letters, digits, _ and -, got {show(text)}")
    return text


def headerName(value: Any) -> str:
    """
    An HTTP header name, lowercased.
    """
    text = string(value)
    if not _TOKEN.fullmatch(text):
        raise Invalid(f"not a valid HTTP header name: {show(text)}")
    return text.lower()


def directory(value: Any, base: str) -> str:
    """
    A directory, made absolute against C{base} (the directory of the config
    file). Whether it exists is not checked.
    """
    return os.path.abspath(os.path.join(base, nonEmptyString(value)))


def rules(value: Any) -> str:
    """
    Dtab text, checked with the dtab parser.
    """
    text = string(value)
    from meshproxy.routing.dtab import Dtab, DtabSyntaxError

    try:
        Dtab.read(text)
    except DtabSyntaxError as e:
        # str(e) repeats the position at its end; .message is the bare text.
        message = getattr(e, "message", None) or str(e)
        raise Invalid(f"line {e.line}, column {e.column}: {message}") from e
    return text


# -- addresses, networks, host names -----------------------------------------

_HOST_LABEL = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?")
_WEIGHT = re.compile(r"[0-9]+(?:\.[0-9]*)?|\.[0-9]+")
_ADDRESS_FORM = 'expected "host:port" or "host:port weight"'
_NETWORK_FORM = 'expected an IP address or a network like "10.0.0.0/8"'


def _port(text: str, minimum: int) -> int:
    if not re.fullmatch(r"[0-9]{1,5}", text) or not minimum <= int(text) <= 65535:
        raise Invalid(f"port must be between {minimum} and 65535, got {show(text)}")
    return int(text)


def address(value: Any) -> tuple[str, int, float]:
    """
    Parse C{"host:port"} or C{"host:port weight"}; an IPv6 host goes in
    brackets (C{"[::1]:80"}) and is returned without them.

    A C{(host, port, weight)} tuple, as stored, is checked in its text form.

    @return: C{(host, port, weight)}.
    """
    if isinstance(value, tuple) and len(value) == 3:
        host, port, weight = value
        value = f"[{host}]:{port} {weight}" if ":" in str(host) else f"{host}:{port} {weight}"
    if not isinstance(value, str):
        raise Invalid(f"{_ADDRESS_FORM}, got {show(value)}")
    parts = value.split()
    if len(parts) not in (1, 2):
        raise Invalid(f"{_ADDRESS_FORM}, got {show(value)}")
    weight = 1.0
    if len(parts) == 2:
        if not _WEIGHT.fullmatch(parts[1]) or not 0 < float(parts[1]) < math.inf:
            raise Invalid(f"weight must be a positive number, got {show(parts[1])}")
        weight = float(parts[1])
    hostPort = parts[0]
    if hostPort.startswith("["):
        end = hostPort.find("]")
        if end < 0 or hostPort[end + 1 : end + 2] != ":":
            raise Invalid(f'expected "[IPv6 address]:port", got {show(hostPort)}')
        host, portText = hostPort[1:end], hostPort[end + 2 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError as e:
            raise Invalid(f"not an IPv6 address: {show(host)}") from e
    else:
        host, colon, portText = hostPort.rpartition(":")
        if not colon:
            raise Invalid(f"{_ADDRESS_FORM}, got {show(value)} (no port)")
        if ":" in host:
            raise Invalid(
                f'an IPv6 address goes in brackets, like "[::1]:80", got {show(hostPort)}'
            )
        hostName(host)
    return host, _port(portText, minimum=1), weight


def hostName(host: str) -> str:
    """
    An IPv4 address with four parts, or a DNS host name.
    """
    if re.fullmatch(r"[0-9.]+", host):
        # The resolver reads "10.1" as 10.0.0.1: demand four parts.
        try:
            ipaddress.IPv4Address(host)
        except ValueError as e:
            raise Invalid(f"not an IPv4 address: {show(host)}") from e
        return host
    labels = host[:-1].split(".") if host.endswith(".") else host.split(".")
    if (
        not host
        or len(host) > 253
        or not all(_HOST_LABEL.fullmatch(label) and len(label) <= 63 for label in labels)
    ):
        raise Invalid(f"not a valid host name: {show(host)}")
    return host


def network(value: Any) -> str:
    """
    An IP address or network (host bits may be set), normalised:
    C{"10.1.2.3/8"} is C{"10.0.0.0/8"}, C{"::1"} is C{"::1/128"}.
    """
    if not isinstance(value, str):
        raise Invalid(f"{_NETWORK_FORM}, got {show(value)}")
    addressText, _, length = value.partition("/")
    try:
        ipaddress.ip_address(addressText)
    except ValueError as e:
        raise Invalid(f"{_NETWORK_FORM}, got {show(value)}") from e
    if "%" in addressText:
        # A scope ("fe80::1%eth0") names an interface, not callers.
        raise Invalid(f"an address with a scope cannot name callers, got {show(value)}")
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError as e:
        raise Invalid(
            f"not a valid prefix length or netmask: {show(length)} in {show(value)}"
        ) from e


def allowedHost(value: Any) -> str:
    """
    A host name the admin API answers to: C{"*"}, or a DNS name (no port,
    no scheme), lowercased and without a final dot.
    """
    if not isinstance(value, str):
        raise Invalid(f"expected a host name, got {show(value)}")
    if value == "*":
        return value
    name = value.lower().rstrip(".")
    if not name or any(
        not label
        or len(label) > 63
        or not label.isascii()
        or not all(c.isalnum() or c == "-" for c in label)
        for label in name.split(".")
    ):
        raise Invalid(
            'expected a host name such as "mesh.example" (no port, no scheme) or "*", '
            f"got {show(value)}"
        )
    return name


def httpURL(value: Any, what: str, example: str) -> SplitResult:
    """
    An C{http://} or C{https://} URL with a host (and a valid port, when
    there is one), without user information.

    @param what: what the URL is, for errors (C{"a collector URL"}).
    @param example: a URL of that kind, for errors.
    @return: the URL's parts.
    """
    expected = f'expected an http:// or https:// URL such as "{example}"'
    if not isinstance(value, str):
        raise Invalid(f"{expected}, got {show(value)}")
    try:
        parts = urlsplit(value)
        # (read for its check: a port that is not a number raises)
        _ = parts.port
    except ValueError as e:
        raise Invalid(f"{expected}, got {show(value)}: {e}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise Invalid(f"{expected}, got {show(value)}")
    if parts.username is not None or parts.password is not None:
        raise Invalid(f"{what} takes no user name or password")
    return parts
