"""
Twisted server endpoint descriptions (C{tcp:4140:interface=127.0.0.1}),
checked without listening and described in the proxy's own words; and
whether a listener's address belongs to this host.
"""

import errno
import ipaddress
import re
import socket
from collections.abc import Mapping
from typing import Any

from meshproxy.config.checks import Invalid, hostName, nonEmptyString, show, suggest

__all__ = ["checkInterface", "endpoint", "parseEndpoint"]

#: The arguments of the server endpoint types meshproxy knows, in the order
#: Twisted's parsers take them unnamed. C{tls} is another name for C{ssl}
#: (see L{meshproxy.tap}).
_ENDPOINT_ARGUMENTS = {
    "tcp": ("port", "interface", "backlog"),
    "tcp6": ("port", "backlog", "interface"),
    "ssl": (
        "port", "privateKey", "certKey", "sslmethod", "interface", "backlog",
        "extraCertChain", "dhParameters",
    ),
    "unix": ("address", "mode", "backlog", "lockfile"),
    "systemd": ("domain", "index", "name"),
}
_ENDPOINT_ARGUMENTS["tls"] = _ENDPOINT_ARGUMENTS["ssl"]


def parseEndpoint(text: str) -> tuple[str, dict[str, str]]:
    """
    Split a Twisted server endpoint description into its type and its
    arguments, named as Twisted's parser names them. C{:} separates
    arguments, the first C{=} of an argument separates its name, and C{\\}
    escapes the next character.

    @return: C{(kind, arguments)}; for a type meshproxy does not know, the
        unnamed arguments are named C{"0"}, C{"1"}, ...
    @raise Invalid: when an argument is unknown, repeated, or missing.
    """
    parts: list[list[str]] = [[""]]
    characters = iter(text)
    for character in characters:
        if character == "\\":
            escaped = next(characters, None)
            if escaped is None:
                raise Invalid("ends with a lone backslash")
            parts[-1][-1] += escaped
        elif character == ":":
            parts.append([""])
        elif character == "=" and len(parts[-1]) == 1:
            parts[-1].append("")
        else:
            parts[-1][-1] += character
    if len(parts[0]) != 1:
        raise Invalid(f'expected a type first, as in "tcp:4140", got {show(text)}')
    kind = parts[0][0]
    known = _ENDPOINT_ARGUMENTS.get(kind)
    arguments: dict[str, str] = {}
    unnamed = 0
    for part in parts[1:]:
        if len(part) == 1:
            if known is not None and unnamed >= len(known):
                raise Invalid(f"{kind} takes no more values, got {show(part[0])}")
            name = known[unnamed] if known is not None else str(unnamed)
            unnamed += 1
            value = part[0]
        else:
            name, value = part
            if known is not None and name not in known:
                hint = suggest(name, known) or f" ({kind} takes {', '.join(known)})"
                raise Invalid(f"unknown argument {show(name)}{hint}")
        if name in arguments:
            raise Invalid(
                f"{name} is given twice ({show(arguments[name])} and {show(value)})"
            )
        arguments[name] = value
    if known is not None and kind != "systemd" and known[0] not in arguments:
        raise Invalid(f"{kind} needs a {known[0]}")
    return kind, arguments


def endpoint(value: Any) -> str:
    """
    A Twisted server endpoint description, checked without listening.

    The types meshproxy knows (C{tcp}, C{tcp6}, C{ssl} and its other name
    C{tls}, C{unix}, C{systemd}) have their arguments checked here. The
    C{ssl} key and certificate are loaded, so a missing or bad file is
    reported before any other listener is bound. Other types are handed to
    Twisted's parser (from its plugins).
    """
    text = nonEmptyString(value)
    try:
        kind, arguments = parseEndpoint(text)
        if kind in _ENDPOINT_ARGUMENTS:
            _checkArguments(kind, arguments)
        if kind not in ("tcp", "tcp6", "unix", "systemd"):
            _parseWithTwisted(kind, text)
    except Invalid as e:
        raise Invalid(f"not a valid endpoint description: {e}") from e
    return text


def _number(name: str, text: str) -> int:
    if not re.fullmatch(r"[0-9]+", text):
        raise Invalid(f"{name} {show(text)} is not a number")
    return int(text)


def _checkArguments(kind: str, arguments: Mapping[str, str]) -> None:
    if "port" in arguments:
        port = _number("port", arguments["port"])
        if port > 65535:
            raise Invalid(f"port must be between 0 and 65535, got {port}")
    if "backlog" in arguments:
        _number("backlog", arguments["backlog"])
    interface = arguments.get("interface")
    if interface:
        try:
            ipaddress.ip_address(interface)
        except ValueError:
            try:
                hostName(interface)
            except Invalid as e:
                raise Invalid(
                    f"interface {show(interface)} is not an IP address or a host name"
                ) from e
    if "mode" in arguments and not re.fullmatch(r"[0-7]+", arguments["mode"]):
        raise Invalid(f"mode {show(arguments['mode'])} is not an octal number like 660")
    if arguments.get("lockfile", "0") not in ("0", "1"):
        raise Invalid(f"lockfile must be 0 or 1, got {show(arguments['lockfile'])}")
    if kind in ("ssl", "tls"):
        privateKey = arguments.get("privateKey", "server.pem")
        for name, file in (("privateKey", privateKey), ("certKey", arguments.get("certKey"))):
            if file is not None:
                _checkReadable(name, file)
    if kind == "systemd":
        _checkSystemd(arguments)


def _checkReadable(name: str, file: str) -> None:
    try:
        with open(file, "rb"):
            pass
    except OSError as e:
        raise Invalid(f"cannot read {name} file {show(file)}: {e.strerror}") from e


def _checkSystemd(arguments: Mapping[str, str]) -> None:
    """
    Check the arguments of a C{systemd:} description. Twisted's parser looks
    the descriptor up in C{LISTEN_FDS} while parsing, which only a process
    started by systemd has, so the arguments are checked here instead.
    """
    domain = arguments.get("domain")
    if domain not in ("INET", "INET6", "UNIX"):
        raise Invalid(
            f'systemd: domain must be "INET", "INET6" or "UNIX", got {show(domain)}'
        )
    index, name = arguments.get("index"), arguments.get("name")
    if (index is None) == (name is None):
        raise Invalid("systemd: give exactly one of index= and name=")
    if index is not None and not re.fullmatch(r"[0-9]+", index):
        raise Invalid(f"systemd: index must be a non-negative integer, got {show(index)}")


def _parseWithTwisted(kind: str, text: str) -> None:
    """
    Parse with Twisted's own parser, without listening: for C{ssl}/C{tls}
    this loads the key and certificate; for types meshproxy does not know,
    it is the only check there is.
    """
    from twisted.internet.endpoints import serverFromString
    from twisted.internet.testing import MemoryReactor

    if kind == "tls":
        text = "ssl:" + text[4:]
    try:
        serverFromString(MemoryReactor(), text)
    except Exception as e:
        if kind == "tls" or kind == "ssl":
            raise Invalid(
                "cannot load the TLS certificate and private key"
                " (certKey and privateKey must hold them in PEM form)"
            ) from e
        if isinstance(e, ValueError) and str(e).startswith("Unknown endpoint type"):
            known = sorted(_ENDPOINT_ARGUMENTS)
            hint = suggest(kind, known) or f" (known: {', '.join(known)})"
            raise Invalid(f"unknown endpoint type {show(kind)}{hint}") from e
        raise Invalid(f"{kind}: {e}") from e


def checkInterface(description: str) -> None:
    """
    Check that the C{interface=} address of a listener (if any) belongs to
    this host, by binding a socket to port 0 of it, which does not listen.
    The unspecified addresses (C{0.0.0.0}, C{::}) and loopback addresses
    are always accepted.

    @param description: a valid endpoint description.
    @raise Invalid: if the address cannot be bound here.
    """
    kind, arguments = parseEndpoint(description)
    interface = arguments.get("interface") if kind in _ENDPOINT_ARGUMENTS else None
    if not interface:
        return
    try:
        ip = ipaddress.ip_address(interface.split("%")[0])
    except ValueError:
        ip = None
    if ip is not None and (ip.is_unspecified or ip.is_loopback):
        return
    ipv6 = ip.version == 6 if ip is not None else kind == "tcp6"
    try:
        with socket.socket(socket.AF_INET6 if ipv6 else socket.AF_INET) as s:
            s.bind((interface, 0))
    except socket.gaierror as e:
        raise Invalid(f"interface {show(interface)} cannot be resolved ({e.strerror})") from e
    except OSError as e:
        if e.errno == errno.EADDRNOTAVAIL:
            raise Invalid(f"interface {show(interface)} is not an address of this host") from e
        raise Invalid(f"interface {show(interface)} cannot be bound ({e.strerror})") from e
