"""
The C{meshproxy} command:

 - C{meshproxy check CONFIG} validates a config file the way C{twistd
   meshproxy} would, without binding anything;
 - C{meshproxy explain ROUTER --name /svc/x} (or C{--host}, C{--path}) asks
   a running proxy's admin API how it routes a name, and prints the
   delegation steps, the endpoints they end at, and what the access policy
   says of a caller (C{--caller}, C{--peer}, C{--method});
 - C{meshproxy tap ROUTER} follows a running proxy's live tap (C{GET
   /admin/tap}): one line per request as it finishes, filtered by bound
   name, path, method, status or duration;
 - C{meshproxy schema} prints the JSON Schema of config files, for editors;
 - C{meshproxy rules reset ROUTER --config CONFIG} deletes the rules saved
   through the admin API for a router, so that it starts again with the
   config's rules;
 - C{meshproxy certs init DIR} and C{meshproxy certs issue DIR NAME} make a
   development CA and certificates signed by it, for trying TLS and mTLS
   (not for production);
 - C{meshproxy register --etcd URL --service NAME --address HOST:PORT}
   keeps an instance registered in etcd (a key with a lease kept alive)
   until it is stopped, for a process that cannot do it itself.

Running the proxy itself is C{twistd -n meshproxy --config CONFIG}.

This module imports only the standard library at the top (C{explain} talks
to the admin API with L{urllib.request}, C{tap} with L{http.client}), so
the command starts fast and never installs a reactor (but C{register},
and C{rules reset} with a C{rulesStore}, which run one).
"""

import argparse
import json
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Generator, Mapping, Sequence
from http.client import HTTPMessage
from typing import IO, Any, TextIO

from meshproxy import __version__

DEFAULT_ADMIN = "http://127.0.0.1:9990"
"""The admin API C{explain} asks when given no C{--admin}."""

TOKEN_ENVIRONMENT = "MESHPROXY_ADMIN_TOKEN"
"""The environment variable C{explain} reads the token from by default (a
token on the command line shows in C{ps})."""

TIMEOUT = 10.0
"""Seconds C{explain} waits for the admin API."""

DEVELOPMENT_ONLY = (
    "For development only, not for production: the CA key is an unencrypted file"
    " (use your organisation's CA, SPIRE or cert-manager for real deployments)."
)
"""What C{meshproxy certs} says of what it makes."""


def _parser() -> argparse.ArgumentParser:
    """
    The parser of the whole command line, one subcommand per action.
    """
    parser = argparse.ArgumentParser(
        prog="meshproxy",
        description="Check meshproxy configs, ask a running meshproxy how it routes,"
        " go back to a config's rules, and make development certificates.",
        epilog="Run the proxy itself with: twistd -n meshproxy [--config CONFIG]",
    )
    parser.add_argument(
        "--version", action="version", version="meshproxy %s" % (__version__,)
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    check = commands.add_parser(
        "check",
        help="validate a config file without running it",
        description="Validate a config file as twistd meshproxy would, without binding"
        " anything: print CONFIG: ok and exit 0, or every error and exit 1.",
    )
    check.add_argument("config", metavar="CONFIG", help="the YAML config file")
    explain = commands.add_parser(
        "explain",
        help="show how a running proxy routes a name",
        description=_EXPLAIN_DESCRIPTION,
    )
    _addExplainArguments(explain)
    tap = commands.add_parser(
        "tap",
        help="follow a running proxy's requests, live",
        description=_TAP_DESCRIPTION,
    )
    _addTapArguments(tap)
    commands.add_parser(
        "schema",
        help="print the JSON Schema of config files",
        description="Print the JSON Schema of meshproxy config files, for editors"
        " (see docs/configuration.md).",
    )
    rules = commands.add_parser(
        "rules",
        help="manage the rules saved through the admin API",
        description="Manage the rules that the admin API saved for a router"
        " (rules-ROUTER.json in admin.stateDir, by default next to the config file).",
    )
    rulesCommands = rules.add_subparsers(dest="rulesCommand", metavar="COMMAND", required=True)
    reset = rulesCommands.add_parser(
        "reset",
        help="go back to the config's rules at the next start",
        description="Delete the rules saved through the admin API for ROUTER, so that"
        " meshproxy uses the config's rules again from its next start (a running"
        " meshproxy keeps its rules until it restarts). With a rulesStore in the"
        " config, delete the router's key in etcd instead: every meshproxy following"
        " the store goes back to the config's rules at once.",
    )
    reset.add_argument("router", metavar="ROUTER", help="the router's name")
    reset.add_argument(
        "--config", metavar="CONFIG", default=None,
        help="the config file meshproxy runs with (without it: the embedded demo,"
        " which saves nothing)",
    )
    certsParser = commands.add_parser(
        "certs",
        help="make a development CA and certificates (not for production)",
        description="Make a development certificate authority and certificates signed"
        " by it, to try TLS and mTLS between meshproxies. " + DEVELOPMENT_ONLY,
    )
    certsCommands = certsParser.add_subparsers(
        dest="certsCommand", metavar="COMMAND", required=True
    )
    init = certsCommands.add_parser(
        "init",
        help="make a development CA in DIR",
        description="Make a development CA in DIR (created if missing): ca.pem, its"
        " certificate (what clientCertificates.ca and upstreamTls.ca name), and ca.key,"
        " its key. An existing CA is never overwritten. " + DEVELOPMENT_ONLY,
    )
    init.add_argument("directory", metavar="DIR", help="where the CA's files go")
    issue = certsCommands.add_parser(
        "issue",
        help="issue a certificate signed by the CA in DIR",
        description="Issue a certificate for NAME, signed by the CA in DIR, good for"
        " TLS servers and clients: DIR/NAME.pem and DIR/NAME.key (replaced if they"
        " exist). Without --dns, NAME is its DNS name. " + DEVELOPMENT_ONLY,
    )
    issue.add_argument("directory", metavar="DIR", help="the CA's directory (certs init)")
    issue.add_argument(
        "name", metavar="NAME",
        help="the files' name and the certificate's common name (letters, digits, . _ -)",
    )
    issue.add_argument(
        "--uri", action="append", default=[], metavar="URI",
        help="a URI name, the identity policies match (spiffe://mesh.local/web); repeatable",
    )
    issue.add_argument(
        "--dns", action="append", default=[], metavar="NAME",
        help="a DNS name (default: NAME); repeatable",
    )
    issue.add_argument(
        "--ip", action="append", default=[], metavar="ADDR",
        help="an IP address (127.0.0.1); repeatable",
    )
    registerParser = commands.add_parser(
        "register",
        help="keep a service instance registered in etcd until stopped",
        description=_REGISTER_DESCRIPTION,
    )
    _addRegisterArguments(registerParser)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """
    Entry point of the C{meshproxy} console script.

    @param argv: the arguments after the program name.
    @return: the exit status: 0 on success (and for C{--help} and
        C{--version}), 1 when the command failed, 2 on a bad command line.
    """
    args = sys.argv[1:] if argv is None else argv
    try:
        options = _parser().parse_args(args)
    except SystemExit as e:
        # argparse has printed the help, the version, or the usage and the
        # mistake. It exits with an int status (SystemExit.code is typed
        # str | int | None).
        return e.code  # type: ignore[return-value]
    if options.command == "check":
        return check(options.config)
    if options.command == "schema":
        return schema()
    if options.command == "rules":
        return resetRules(options.router, options.config, sys.stdout, sys.stderr)
    if options.command == "certs":
        return certs(options, sys.stdout, sys.stderr)
    if options.command == "tap":
        return _tap(options, sys.stdout, sys.stderr, os.environ)
    if options.command == "register":
        return register(options, sys.stdout, sys.stderr, os.environ)
    return _explain(options, sys.stdout, sys.stderr, os.environ)


def check(path: str) -> int:
    """
    C{meshproxy check CONFIG}: the checks of C{twistd meshproxy --config
    CONFIG --check}, which print C{CONFIG: ok} or the errors.

    @param path: the config file.
    @return: the exit status: 0 when valid, 1 otherwise.
    """
    from meshproxy.tap import Options

    try:
        Options().parseOptions(["--config=" + path, "--check"])
    except SystemExit as e:
        # Options exits with 0 or 1 (SystemExit.code is typed
        # str | int | None).
        return e.code  # type: ignore[return-value]
    raise AssertionError("--check always exits")


def schema(out: TextIO | None = None) -> int:
    """
    C{meshproxy schema}: print the JSON Schema of config files.

    @param out: where it goes (default: standard output).
    @return: the exit status, 0.
    """
    from meshproxy.config import jsonSchema

    out = sys.stdout if out is None else out
    out.write(json.dumps(jsonSchema(), indent=2) + "\n")
    return 0


def rulesStatePath(stateDir: str, router: str) -> str:
    """
    The file where the admin API saves a router's rules (as
    L{meshproxy.admin.rules.RulesStore.path} names it).

    @param stateDir: the state directory.
    @param router: the router's name.
    """
    return os.path.join(stateDir, "rules-%s.json" % (urllib.parse.quote(router, safe=""),))


def _resetInStore(router: str, store: Any, out: TextIO, err: TextIO) -> int:
    """
    Reset a router's rules kept in an etcd C{rulesStore}: delete its key.
    Every meshproxy following the store sees the delete, the first one
    writes its config's rules back, and all apply them (see
    docs/many-hosts.md). Runs the reactor.

    @param store: the config's C{rulesStore} section.
    @return: the exit status: 0 when the key is gone, 1 when etcd could not
        be asked.
    """
    from twisted.internet import reactor

    from meshproxy.etcd import clientFor

    key = store.keyPrefix + router
    try:
        client = clientFor(store, reactor=reactor)
    except ValueError as e:
        err.write("meshproxy rules reset: rulesStore: %s\n" % (e,))
        return 1
    outcome = {"status": 1}

    def deleted(result: tuple[int, int]) -> None:
        _, count = result
        outcome["status"] = 0
        if count:
            out.write(
                "deleted etcd key %s: every meshproxy following this rules store"
                " applies router %s's config rules now (the first to see the delete"
                " writes them back)\n" % (key, router)
            )
        else:
            out.write(
                "router %s has no rules in the store (etcd key %s does not exist):"
                " the config's are written there at the next start\n" % (router, key)
            )

    def failed(failure: Any) -> None:
        err.write(
            "meshproxy rules reset: cannot delete etcd key %s: %s\n"
            % (key, failure.getErrorMessage())
        )

    def start() -> None:
        d = client.delete(key)
        d.addCallbacks(deleted, failed)
        d.addBoth(lambda _: client.close())
        d.addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(start)
    reactor.run()
    return outcome["status"]


def resetRules(router: str, configPath: str | None, out: TextIO, err: TextIO) -> int:
    """
    C{meshproxy rules reset ROUTER [--config CONFIG]}: delete the rules
    saved through the admin API for C{router}, so that it uses the config's
    rules from the next start; with a C{rulesStore}, delete its key in etcd
    (every proxy following the store goes back to the config's rules at
    once).

    @param router: the router's name.
    @param configPath: the config file, or L{None} for the embedded demo.
    @param out: where the outcome is said.
    @param err: where errors go.
    @return: the exit status: 0 when the router has no saved rules any
        more, 1 otherwise.
    """
    from meshproxy.config import ConfigError, loadConfig
    from meshproxy.runtime import stateDirectory

    if configPath is None:
        out.write(
            "nothing to reset: the embedded demo keeps rules changed through the admin"
            " API in memory only (give --config CONFIG for a config file's)\n"
        )
        return 0
    try:
        config = loadConfig(configPath)
    except ConfigError as e:
        err.write("%s: invalid\n%s\n" % (configPath, e))
        return 1
    routers = {r.name: r for r in config.routers}
    found = routers.get(router)
    if found is None:
        err.write(
            "meshproxy rules reset: %s has no router %s (its routers: %s)\n"
            % (configPath, router, ", ".join(routers) or "none")
        )
        return 1
    if config.rulesStore is not None:
        return _resetInStore(router, config.rulesStore, out, err)
    # (HTTP and TCP routers alike have rules the admin API may have saved)
    path = rulesStatePath(stateDirectory(config, configPath), router)
    try:
        os.remove(path)
    except FileNotFoundError:
        out.write(
            "router %s has no saved rules (%s does not exist): it uses the config's\n"
            % (router, path)
        )
        return 0
    except OSError as e:
        err.write(
            "meshproxy rules reset: cannot delete %s: %s\n" % (path, _osReason(e))
        )
        return 1
    out.write(
        "deleted %s: router %s uses the config's rules from the next start of"
        " meshproxy (a running one keeps its rules until it restarts)\n" % (path, router)
    )
    return 0


def certs(options: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """
    C{meshproxy certs init DIR} and C{meshproxy certs issue DIR NAME [--uri
    URI]... [--dns NAME]... [--ip ADDR]...}: make a development CA, or a
    certificate signed by it, and say which files were written.

    @param options: the parsed command line (C{certsCommand},
        C{directory}, and for C{issue} C{name}, C{uri}, C{dns}, C{ip}).
    @param out: where the files written are listed.
    @param err: where errors go.
    @return: the exit status: 0 when written, 1 otherwise (nothing is
        half-written: the CA is made whole or not at all).
    """
    from meshproxy.certs import CertsError, initAuthority, issue

    command = options.certsCommand
    try:
        if command == "init":
            made = initAuthority(options.directory)
            lines = [
                "wrote %s (the CA certificate: give it as tls.clientCertificates.ca and"
                " upstreamTls.ca)" % (made.cert,),
                "wrote %s (the CA key, readable by you only: keep it for certs issue)"
                % (made.key,),
            ]
        else:
            made = issue(
                options.directory,
                options.name,
                uris=tuple(options.uri),
                dnsNames=tuple(options.dns),
                ips=tuple(options.ip),
            )
            names = ["URI %s" % (u,) for u in options.uri]
            names += ["DNS %s" % (d,) for d in options.dns or [options.name]]
            names += ["IP %s" % (a,) for a in options.ip]
            lines = [
                "wrote %s (the certificate of %s: %s)"
                % (made.cert, options.name, ", ".join(names)),
                "wrote %s (its key, readable by you only)" % (made.key,),
            ]
    except CertsError as e:
        err.write("meshproxy certs %s: %s\n" % (command, e))
        return 1
    except OSError as e:
        where = e.filename if e.filename is not None else options.directory
        err.write("meshproxy certs %s: cannot write %s: %s\n" % (command, where, _osReason(e)))
        return 1
    out.write("\n".join(lines) + "\n" + DEVELOPMENT_ONLY + "\n")
    return 0


def _osReason(error: OSError) -> str:
    """
    An operating system error in a few lowercase words, without errno.
    """
    return (error.strerror or str(error)).lower()


PASSWORD_ENVIRONMENT = "MESHPROXY_ETCD_PASSWORD"
"""The environment variable C{register} reads the etcd password from by
default (a password on the command line shows in C{ps})."""

_REGISTER_DESCRIPTION = (
    "Register an instance of a service in etcd, as the etcd namer reads it (the key"
    " KEY_PREFIX/SERVICE/ADDRESS, its value ADDRESS [WEIGHT]), attached to a lease kept"
    " alive every third of its TTL; register again if the lease is lost. On SIGTERM or"
    " SIGINT, delete the key and revoke the lease, then exit. Exits 1 at once if etcd"
    " cannot be reached at the start."
)


def _addRegisterArguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--etcd", action="append", required=True, metavar="URL[,URL]",
        help="etcd's URLs (http://127.0.0.1:2379), comma-separated or repeated",
    )
    parser.add_argument("--service", required=True, help="the service's name (users)")
    parser.add_argument(
        "--address", required=True, metavar="HOST:PORT",
        help="the instance's address (10.0.0.5:8080, [fd00::5]:8080)",
    )
    parser.add_argument("--weight", type=float, default=None, help="its weight (default 1)")
    parser.add_argument(
        "--ttl", default="10s", metavar="DURATION",
        help="the lease's time to live (default: %(default)s); the key is gone this long"
        " after the process dies without deregistering",
    )
    parser.add_argument(
        "--key-prefix", default="/meshproxy/services/", metavar="PREFIX",
        help="the namer's keyPrefix (default: %(default)s)",
    )
    parser.add_argument("--username", default=None, help="the etcd user, if auth is on")
    parser.add_argument(
        "--password", default=None,
        help="its password (default: $%s)" % (PASSWORD_ENVIRONMENT,),
    )
    parser.add_argument("--ca", default=None, metavar="PEM", help="etcd's CA (https://)")
    parser.add_argument("--cert", default=None, metavar="PEM", help="a client certificate")
    parser.add_argument("--key", default=None, metavar="PEM", help="its private key")


def register(
    options: argparse.Namespace, out: TextIO, err: TextIO, environ: Mapping[str, str]
) -> int:
    """
    C{meshproxy register}: register an instance in etcd and keep it
    registered until SIGTERM or SIGINT, then deregister (see
    L{meshproxy.discovery.etcd.EtcdRegistration}). Runs the reactor.

    @param options: the parsed command line.
    @param out: where registrations and their changes are said.
    @param err: where errors go.
    @param environ: the environment, for the password.
    @return: the exit status: 0 after deregistering, 1 when etcd could not
        be reached at the start (or the key not deleted at the end), 2 on
        bad arguments.
    """
    import math

    from meshproxy.config.checks import Invalid, parseDuration
    from meshproxy.discovery.endpoints import Endpoint

    def usage(message: str) -> int:
        err.write("meshproxy register: %s\n" % (message,))
        return 2

    try:
        endpoint = Endpoint.parse(options.address)
        if options.weight is not None:
            endpoint = Endpoint(endpoint.host, endpoint.port, options.weight)
    except ValueError as e:
        return usage("--address/--weight: %s" % (e,))
    try:
        seconds = parseDuration(options.ttl)
    except Invalid as e:
        return usage("--ttl: %s" % (e,))
    if seconds < 1:
        return usage("--ttl: at least 1s, got %s" % (options.ttl,))
    urls = [url.strip() for urls in options.etcd for url in urls.split(",") if url.strip()]
    password = options.password
    if password is None and options.username is not None:
        password = environ.get(PASSWORD_ENVIRONMENT)
        if password is None:
            return usage("--username needs --password (or $%s)" % (PASSWORD_ENVIRONMENT,))
    if options.key is not None and options.cert is None:
        return usage("--key needs --cert")

    from twisted.internet import reactor

    from meshproxy.discovery.etcd import EtcdRegistration
    from meshproxy.etcd import EtcdClient, TLSFiles

    tls = None
    if options.ca or options.cert:
        tls = TLSFiles(ca=options.ca, cert=options.cert, key=options.key)
    try:
        client = EtcdClient(
            urls, reactor=reactor, username=options.username, password=password, tls=tls
        )
        registration = EtcdRegistration(
            client,
            options.key_prefix,
            options.service,
            endpoint,
            ttl=math.ceil(seconds),
            reactor=reactor,
            report=lambda line: (out.write(line + "\n"), out.flush()),
        )
    except ValueError as e:
        return usage(str(e))
    outcome = {"status": 0, "registered": False}

    def started(_: object) -> None:
        outcome["registered"] = True

    def failed(failure: Any) -> None:
        err.write(
            "meshproxy register: cannot register %s: %s\n"
            % (registration.key, failure.getErrorMessage())
        )
        err.flush()
        outcome["status"] = 1
        reactor.stop()

    def start() -> None:
        registration.start().addCallbacks(started, failed)

    def stop() -> Any:
        if not outcome["registered"]:
            return client.close()
        d = registration.stop()

        def stopped(deregistered: bool) -> Any:
            if not deregistered:
                outcome["status"] = 1
            return client.close()

        return d.addCallback(stopped)

    reactor.callWhenRunning(start)
    reactor.addSystemEventTrigger("before", "shutdown", stop)
    reactor.run()
    return outcome["status"]


class ExplainError(Exception):
    """
    C{explain} could not get an explanation; the message says why.
    """


_EXPLAIN_DESCRIPTION = (
    "Show how a running meshproxy routes a logical name, a Host or a path:"
    " the delegation steps and the endpoints."
)


def _addRouterArguments(parser: argparse.ArgumentParser) -> None:
    """
    What every command asking a running meshproxy about one router takes:
    the admin API, its token, the router.
    """
    parser.add_argument(
        "--admin", default=DEFAULT_ADMIN, metavar="URL",
        help="the admin API (default: %(default)s)",
    )
    parser.add_argument(
        "--token", default=None, metavar="T",
        help="the admin token, if the API protects reads "
        "(default: $%s)" % (TOKEN_ENVIRONMENT,),
    )
    parser.add_argument("router", metavar="ROUTER", help="the router's name")


def _addExplainArguments(parser: argparse.ArgumentParser) -> None:
    _addRouterArguments(parser)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--name", help="a logical name, e.g. /svc/users")
    what.add_argument("--host", help="a Host header value, identified as the router does")
    what.add_argument("--path", help="a request path, identified as the router does")
    who = parser.add_argument_group(
        "the caller", "whom the access policy's decision is for (default: an"
        " unauthenticated GET from no known address)",
    )
    who.add_argument(
        "--caller", metavar="IDENTITY",
        help="the caller's verified identity, e.g. spiffe://mesh.local/web",
    )
    who.add_argument("--peer", metavar="ADDR", help="the caller's IP address")
    who.add_argument("--method", metavar="METHOD", help="the request's method (default: GET)")


def explainMain(
    argv: Sequence[str],
    out: TextIO | None = None,
    err: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """
    C{meshproxy explain ...}.

    @param argv: the arguments after C{explain}.
    @param out: where the explanation goes (default: standard output).
    @param err: where errors go (default: standard error).
    @param environ: the environment (default: L{os.environ}), for the token.
    @return: the exit status: 0 on success, 1 when the admin API could not
        explain, 2 on bad arguments.
    """
    parser = argparse.ArgumentParser(prog="meshproxy explain", description=_EXPLAIN_DESCRIPTION)
    _addExplainArguments(parser)
    return _runCommand(parser, argv, _explain, out, err, environ)


def _runCommand(
    parser: argparse.ArgumentParser,
    argv: Sequence[str],
    command: Callable[[argparse.Namespace, TextIO, TextIO, Mapping[str, str]], int],
    out: TextIO | None,
    err: TextIO | None,
    environ: Mapping[str, str] | None,
) -> int:
    """
    Parse a subcommand's arguments and run it with the standard streams and
    environment unless others are given.

    @return: the command's exit status, or argparse's (2) on bad arguments.
    """
    try:
        options = parser.parse_args(argv)
    except SystemExit as e:
        # argparse has printed the usage or the help. It exits with an int
        # status (SystemExit.code is typed str | int | None).
        return e.code  # type: ignore[return-value]
    return command(
        options,
        sys.stdout if out is None else out,
        sys.stderr if err is None else err,
        os.environ if environ is None else environ,
    )


def _explain(
    options: argparse.Namespace, out: TextIO, err: TextIO, environ: Mapping[str, str]
) -> int:
    token = options.token if options.token is not None else environ.get(TOKEN_ENVIRONMENT)
    if options.name is not None:
        query = ("name", options.name)
    elif options.host is not None:
        query = ("host", options.host)
    else:
        query = ("path", options.path)
    caller = {
        key: value
        for key in ("caller", "peer", "method")
        if (value := getattr(options, key)) is not None
    }
    try:
        answer = fetchExplain(options.admin, options.router, query, token=token, caller=caller)
    except ExplainError as e:
        err.write("meshproxy explain: %s\n" % (e,))
        return 1
    try:
        text = formatExplain(options.router, answer, **caller)
    except ExplainError as e:
        err.write("meshproxy explain: %s\n" % (e,))
        return 1
    out.write(text)
    return 0


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    # The admin API never redirects; following one could carry the token
    # to another host.
    def redirect_request(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: HTTPMessage,
        newurl: str,
    ) -> urllib.request.Request | None:
        return None


def fetchExplain(
    admin: str,
    router: str,
    query: tuple[str, str],
    *,
    token: str | None = None,
    caller: Mapping[str, str] | None = None,
    timeout: float = TIMEOUT,
) -> dict[str, Any]:
    """
    Ask the admin API for an explanation.

    @param admin: the admin API's base URL (C{http://127.0.0.1:9990}).
    @param router: the router's name.
    @param query: C{(kind, value)}, C{kind} one of C{"name"}, C{"host"},
        C{"path"}.
    @param token: the bearer token, or L{None}.
    @param caller: whom the policy's decision is for: any of C{"caller"}
        (an identity), C{"peer"} (an IP address) and C{"method"}; the
        API's defaults for those left out.
    @param timeout: seconds to wait for the answer.
    @return: the decoded JSON answer.
    @raise ExplainError: with a readable reason when the API cannot be
        reached or answers with an error.
    """
    base = urllib.parse.urlsplit(admin)
    if base.scheme not in ("http", "https") or not base.netloc:
        raise ExplainError("--admin must be an http:// or https:// URL, got %r" % (admin,))
    url = "%s/admin/routers/%s/explain?%s" % (
        admin.rstrip("/"),
        urllib.parse.quote(router, safe=""),
        urllib.parse.urlencode([query, *sorted((caller or {}).items())]),
    )
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if token:
        request.add_header("Authorization", "Bearer " + token)
    # No proxies: the admin API is usually on loopback, and an
    # http_proxy from the environment must not see the token.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}), _NoRedirects)
    try:
        with opener.open(request, timeout=timeout) as response:
            body = response.read()
    except urllib.error.HTTPError as e:
        raise ExplainError(_httpError(e)) from None
    except (urllib.error.URLError, OSError) as e:
        reason = _reachReason(getattr(e, "reason", e), timeout)
        raise ExplainError("cannot reach the admin API at %s: %s" % (admin, reason)) from None
    try:
        answer = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise ExplainError("the admin API at %s did not answer JSON" % (admin,)) from None
    if not isinstance(answer, dict):
        raise ExplainError("the admin API at %s answered an unexpected %s"
                           % (admin, type(answer).__name__))
    return answer


def _reachReason(reason: OSError | str, timeout: float) -> str:
    """
    Why the admin API could not be reached, in the proxy's words.

    @param reason: what urllib raised or gave as the reason: an
        L{OSError}, or text.
    @param timeout: the seconds waited.
    """
    import socket
    import ssl

    if isinstance(reason, (TimeoutError, socket.timeout)):
        return "no answer within %g s" % (timeout,)
    if isinstance(reason, ConnectionRefusedError):
        return "connection refused (is meshproxy running, with its admin API there?)"
    if isinstance(reason, socket.gaierror):
        return "unknown host"
    if isinstance(reason, ssl.SSLCertVerificationError):
        return "its TLS certificate is not trusted (%s)" % (reason.verify_message,)
    if isinstance(reason, ssl.SSLError):
        return "TLS failed (%s)" % (reason.reason or "handshake",)
    if isinstance(reason, OSError):
        return _osReason(reason)
    return str(reason)


def _httpError(error: urllib.error.HTTPError) -> str:
    """
    A readable reason for an error answer of the admin API.
    """
    try:
        with error:
            detail = json.loads(error.read(65536).decode("utf-8")).get("error")
    except Exception:
        detail = None
    reason = "admin API answered %d" % (error.code,)
    if error.code == 401:
        detail = (detail or "unauthorized") + " (give --token or set $%s)" % (TOKEN_ENVIRONMENT,)
    return "%s: %s" % (reason, detail) if detail else "%s %s" % (reason, error.reason)


# -- tap ----------------------------------------------------------------------

TAP_IDLE = 45.0
"""Seconds C{tap} waits for any byte of the stream before giving up (the
proxy sends a heartbeat every 15 s)."""

_TAP_LINE_LIMIT = 1024 * 1024

_TAP_DESCRIPTION = (
    "Follow the requests of a running meshproxy's router as they finish, one line"
    " each (time, status, method, host and path, duration, endpoint, mesh-err), until"
    " the proxy shuts down or Ctrl-C. Give filters to see only some requests."
)


class TapError(Exception):
    """
    C{tap} could not follow the stream; the message says why.
    """


def _addTapArguments(parser: argparse.ArgumentParser) -> None:
    _addRouterArguments(parser)
    parser.add_argument(
        "--status", metavar="STATUS",
        help="only these statuses: a class (5xx), a code (404), or 0 (the client left"
        " before any answer)",
    )
    parser.add_argument(
        "--name", metavar="BOUND", help="only this bound name, exactly (/#/fs/users)"
    )
    parser.add_argument("--path", metavar="PREFIX", help="only paths starting with PREFIX")
    parser.add_argument("--method", metavar="METHOD", help="only this method (GET)")
    parser.add_argument(
        "--min-duration", metavar="DURATION", dest="minDuration",
        help="only requests that took at least DURATION (100ms, 1.5s)",
    )
    parser.add_argument(
        "--json", action="store_true",
        help="print each request's JSON summary as the proxy sends it",
    )


def tapMain(
    argv: Sequence[str],
    out: TextIO | None = None,
    err: TextIO | None = None,
    environ: Mapping[str, str] | None = None,
) -> int:
    """
    C{meshproxy tap ...}.

    @param argv: the arguments after C{tap}.
    @param out: where the requests go (default: standard output).
    @param err: where notices and errors go (default: standard error).
    @param environ: the environment (default: L{os.environ}), for the token.
    @return: the exit status: 0 when the proxy ended the stream (or on
        Ctrl-C), 1 when the stream could not be followed, 2 on bad
        arguments.
    """
    parser = argparse.ArgumentParser(prog="meshproxy tap", description=_TAP_DESCRIPTION)
    _addTapArguments(parser)
    return _runCommand(parser, argv, _tap, out, err, environ)


def _tap(
    options: argparse.Namespace, out: TextIO, err: TextIO, environ: Mapping[str, str]
) -> int:
    token = options.token if options.token is not None else environ.get(TOKEN_ENVIRONMENT)
    query = [("router", options.router)]
    for key in ("name", "path", "method", "status"):
        value = getattr(options, key)
        if value is not None:
            query.append((key, value))
    if options.minDuration is not None:
        from meshproxy.config.checks import parseDuration

        try:
            seconds = parseDuration(options.minDuration)
        except ValueError as e:
            err.write("meshproxy tap: --min-duration: %s\n" % (e,))
            return 2
        query.append(("minDurationMs", _decimal(seconds * 1000.0)))
    stream = followTap(options.admin, query, token=token)
    try:
        for kind, data in stream:
            if kind == "message":
                out.write((data if options.json else formatSummary(data)) + "\n")
                out.flush()
            elif kind == "dropped":
                err.write(
                    "meshproxy tap: %s events dropped: this reader was slower than the"
                    " requests (narrow the filters)\n" % (_field(data, "dropped", "some"),)
                )
            elif kind == "end":
                err.write(
                    "meshproxy tap: the proxy ended the stream (%s)\n"
                    % (_field(data, "reason", "no reason given"),)
                )
                return 0
    except TapError as e:
        err.write("meshproxy tap: %s\n" % (e,))
        return 1
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:
        # The reader went away (meshproxy tap web | head): stop quietly.
        _discardOutput(out)
        return 0
    finally:
        stream.close()
    err.write("meshproxy tap: the admin API at %s closed the stream\n" % (options.admin,))
    return 1


def _decimal(value: float) -> str:
    """
    A number as the tap's C{minDurationMs=} takes it: plain decimals,
    never an exponent (C{0.1}, C{1500}).
    """
    return ("%.3f" % (value,)).rstrip("0").rstrip(".")


def _field(data: str, key: str, default: str) -> str:
    """
    One field of an event's JSON object, as text, or C{default}.
    """
    try:
        value = json.loads(data)
    except ValueError:
        return default
    if not isinstance(value, dict) or value.get(key) is None:
        return default
    return str(value[key])


def _discardOutput(out: TextIO) -> None:
    """
    Point C{out}'s file descriptor at C{/dev/null}, so that flushing it at
    exit does not fail again on a closed pipe.
    """
    try:
        fd = out.fileno()
    except (AttributeError, OSError, ValueError):
        return
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
    finally:
        os.close(devnull)


def followTap(
    admin: str,
    query: Sequence[tuple[str, str]],
    *,
    token: str | None = None,
    timeout: float = TIMEOUT,
    idle: float = TAP_IDLE,
) -> Generator[tuple[str, str], None, None]:
    """
    Follow C{GET /admin/tap}: the server-sent events of the stream, as they
    come. Close the iterator to hang up.

    @param admin: the admin API's base URL (C{http://127.0.0.1:9990}).
    @param query: the tap's query parameters, as C{(key, value)}.
    @param token: the bearer token, or L{None}.
    @param timeout: seconds to wait for the connection.
    @param idle: seconds to wait for any byte of the stream (its head, an
        event or a heartbeat).
    @return: an iterator of C{(event, data)}: C{event} is C{"message"} for
        a request summary (C{data} its JSON object), else the event's name
        (C{"dropped"}, C{"end"}); it ends when the stream does.
    @raise TapError: with a readable reason when the API cannot be reached,
        answers with an error, or the stream breaks or goes quiet.
    """
    import http.client

    base = urllib.parse.urlsplit(admin)
    try:
        port = base.port
    except ValueError:
        port = -1
    if base.scheme not in ("http", "https") or not base.hostname or port == -1:
        raise TapError("--admin must be an http:// or https:// URL, got %r" % (admin,))
    target = "%s/admin/tap?%s" % (base.path.rstrip("/"), urllib.parse.urlencode(list(query)))
    headers = {"Accept": "text/event-stream"}
    if token:
        headers["Authorization"] = "Bearer " + token
    connection: http.client.HTTPConnection
    if base.scheme == "https":
        connection = http.client.HTTPSConnection(base.hostname, port, timeout=timeout)
    else:
        connection = http.client.HTTPConnection(base.hostname, port, timeout=timeout)
    try:
        try:
            connection.connect()
        except OSError as e:
            reason = _reachReason(e, timeout)
            raise TapError("cannot reach the admin API at %s: %s" % (admin, reason)) from None
        if connection.sock is not None:
            connection.sock.settimeout(idle)
        try:
            connection.request("GET", target, headers=headers)
            response = connection.getresponse()
        except (OSError, http.client.HTTPException) as e:
            reason = _reachReason(e if isinstance(e, OSError) else str(e), idle)
            raise TapError("no answer from the admin API at %s: %s" % (admin, reason)) from None
        if response.status != 200:
            raise TapError(_answerReason(response.status, response.reason, response.read(65536)))
        contentType = (response.getheader("Content-Type") or "").split(";")[0].strip()
        if contentType.lower() != "text/event-stream":
            raise TapError(
                "the admin API at %s did not answer an event stream (Content-Type %r)"
                % (admin, contentType)
            )
        kind = "message"
        data: list[str] = []
        while True:
            try:
                raw = response.readline(_TAP_LINE_LIMIT)
            except TimeoutError:
                raise TapError(
                    "nothing from the admin API at %s for %g s (not even a heartbeat)"
                    % (admin, idle)
                ) from None
            except http.client.IncompleteRead:
                # The connection closed before the stream's last chunk.
                return
            except (OSError, http.client.HTTPException) as e:
                reason = _reachReason(e if isinstance(e, OSError) else str(e), timeout)
                raise TapError("the stream from %s broke: %s" % (admin, reason)) from None
            if not raw:
                return
            line = raw.decode("utf-8", "replace").rstrip("\r\n")
            if not line:
                if data:
                    yield kind, "\n".join(data)
                kind, data = "message", []
            elif not line.startswith(":"):
                field, _, value = line.partition(":")
                if value.startswith(" "):
                    value = value[1:]
                if field == "event":
                    kind = value
                elif field == "data":
                    data.append(value)
    finally:
        connection.close()


def _answerReason(code: int, phrase: str, body: bytes) -> str:
    """
    A readable reason for an error answer of the admin API, from its JSON
    C{error}.
    """
    try:
        detail = json.loads(body.decode("utf-8")).get("error")
    except Exception:
        detail = None
    reason = "admin API answered %d" % (code,)
    if code == 401:
        detail = (detail or "unauthorized") + " (give --token or set $%s)" % (TOKEN_ENVIRONMENT,)
    return "%s: %s" % (reason, detail) if detail else "%s %s" % (reason, phrase)


def formatSummary(data: str) -> str:
    """
    A request summary (the tap's JSON object) as one line for a terminal:
    time, status, method, host and path, duration, endpoint, and the
    C{mesh-err} reason if any::

        2026-12-01T09:00:00.123Z 503 GET users.example/api 12.3ms - mesh-err=overloaded

    @param data: the JSON object; anything else is shown as it came.
    """
    try:
        summary = json.loads(data)
    except ValueError:
        return data
    if not isinstance(summary, dict):
        return data
    duration = summary.get("durationMs")
    parts = [
        str(summary.get("time") or "-"),
        "%3s" % (summary.get("status", "-"),),
        str(summary.get("method") or "-"),
        "%s%s" % (summary.get("authority") or "", summary.get("path") or "") or "-",
        "%.1fms" % (duration,) if isinstance(duration, (int, float)) else "-",
        str(summary.get("endpoint") or "-"),
    ]
    if summary.get("meshErr"):
        parts.append("mesh-err=%s" % (summary["meshErr"],))
    return " ".join(parts)


# -- formatting ---------------------------------------------------------------

def formatExplain(
    router: str,
    answer: Mapping[str, Any],
    *,
    caller: str | None = None,
    peer: str | None = None,
    method: str = "GET",
) -> str:
    """
    Format an explanation for a terminal.

    C{answer} has the one shape of C{GET /admin/routers/{name}/explain}
    (docs/admin.md): C{name}, C{rules}, C{delegation} (the tree of
    L{meshproxy.routing.delegate.explain}: nodes with C{path}, C{dentry},
    C{result}, C{children}, C{bound}, C{neg}/C{fail}/C{empty}/C{error},
    C{repeated}), C{destination}, C{error} on a rules loop, C{endpoints}
    (bound name to its endpoints, each with C{address}, C{state},
    C{ewmaMs}, C{pending}, C{score}, C{weight}), and C{policy} (C{null}
    without a policy, else C{{"allowed", "rule", "reason"}}).

    @param router: the router's name.
    @param answer: the decoded answer of the explain route.
    @param caller: the identity the policy's decision was asked for, or
        L{None} for an unauthenticated caller (to say whom it is about).
    @param peer: the address it was asked for, or L{None}.
    @param method: the method it was asked for.
    @return: the text, ending in a newline.
    @raise ExplainError: when the answer does not have that shape (an
        admin API of another version).
    """
    keys = ("name", "rules", "delegation", "destination", "endpoints", "policy")
    missing = [key for key in keys if key not in answer]
    policy = answer.get("policy")
    if (
        missing
        or not isinstance(answer.get("endpoints"), dict)
        or not (policy is None or isinstance(policy, dict))
    ):
        raise ExplainError(
            "the admin API's answer is not an explanation (missing %s)"
            % (", ".join(missing) or "endpoints or policy")
        )
    lines = ["router %s: %s" % (router, answer["name"])]
    lines.append("destination: %s" % (answer["destination"] or "none"))
    if answer.get("error"):
        lines.append("error: %s" % (answer["error"],))
    lines.append(_formatPolicy(policy, caller, peer, method))
    lines.append("rules:")
    lines.extend("  " + line for line in str(answer["rules"]).splitlines())
    lines.append("delegation:")
    _formatNode(answer["delegation"], 1, lines)
    endpoints = answer["endpoints"]
    if endpoints:
        lines.append("endpoints:")
        for bound in sorted(endpoints):
            lines.append("  %s" % (bound,))
            listed = endpoints[bound] or []
            if not listed:
                lines.append("    (none)")
            for endpoint in listed:
                lines.append("    " + _formatEndpoint(endpoint))
    return "\n".join(lines) + "\n"


def _formatPolicy(
    policy: Mapping[str, Any] | None, caller: str | None, peer: str | None, method: str
) -> str:
    """
    The policy's decision in one line: C{policy: allowed (rule 0 allows)
    for spiffe://mesh.local/web from 10.0.0.1, GET}.
    """
    if policy is None:
        return "policy: none (every caller is allowed)"
    who = caller or "an unauthenticated caller"
    if peer:
        who += " from %s" % (peer,)
    verdict = "allowed" if policy.get("allowed") else "denied"
    return "policy: %s (%s) for %s, %s" % (verdict, policy.get("reason", "?"), who, method)


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "%g" % (value,)
    return str(value)


def _formatNode(node: object, depth: int, lines: list[str]) -> None:
    indent = "  " * depth
    if not isinstance(node, dict):
        lines.append(indent + str(node))
        return
    path = node.get("path")
    text = str(path) if path is not None else ""
    dentry = node.get("dentry")
    result = node.get("result")
    if dentry:
        text += "  (by %s)" % (dentry,)
    if result is not None and result != path:
        text += "  -> %s" % (result,)
    bound = node.get("bound")
    if isinstance(bound, dict):
        text += "  [bound: %s]" % (bound.get("id", "?"),)
    for key in ("neg", "fail", "empty", "error"):
        if node.get(key):
            text += "  [%s: %s]" % (key, node[key])
    if node.get("repeated"):
        text += "  (repeated, see above)"
    lines.append(indent + text.strip())
    for child in node.get("children") or ():
        _formatNode(child, depth + 1, lines)


def _formatEndpoint(endpoint: object) -> str:
    if not isinstance(endpoint, dict):
        return str(endpoint)
    parts = [str(endpoint.get("address", "?"))]
    if endpoint.get("state"):
        parts.append(str(endpoint["state"]))
    for key, label, unit in (
        ("ewmaMs", "ewma", " ms"),
        ("pending", "pending", ""),
        ("score", "score", ""),
        ("weight", "weight", ""),
    ):
        value = endpoint.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if isinstance(value, float):
                value = round(value, 3)
            parts.append("%s %s%s" % (label, _scalar(value), unit))
    return "  ".join(parts)


if __name__ == "__main__":
    sys.exit(main())
