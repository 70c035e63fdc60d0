"""
Tests for L{meshproxy.config}.
"""

from __future__ import annotations

import os
import sys
import textwrap
import types

import twisted.test
from twisted.trial.unittest import SkipTest, SynchronousTestCase

from meshproxy.config import (
    AdminConfig,
    BoundNameConfig,
    BudgetConfig,
    ClassifierConfig,
    ClientConfig,
    ConfigError,
    FailureAccrualConfig,
    FileNamerConfig,
    IdentifierConfig,
    LatencyEjectionConfig,
    LimitsConfig,
    LoadBalancerConfig,
    MeshConfig,
    RetriesConfig,
    RouterConfig,
    ServerConfig,
    StaticNamerConfig,
    TimeoutsConfig,
    TrustConfig,
    checks,
    loadConfig,
    parseConfig,
    parseDuration,
)
from meshproxy.config.problems import Problem, ValidationError, problemsOf

# A key and certificate that Twisted ships for its own tests.
SERVER_PEM = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")

MINIMAL = """
routers:
  - name: web
    listen: "tcp:4140"
"""


def yamlText(text: str) -> str:
    return textwrap.dedent(text).lstrip("\n")


class ErrorAssertions:
    """
    Helpers for tests that expect a L{ConfigError}.
    """

    def errorsOf(self, text: str) -> list[str]:
        """
        Parse C{text}, which must be invalid, and return the error list.
        """
        with self.assertRaises(ConfigError) as caught:
            parseConfig(yamlText(text))
        return caught.exception.errors

    def assertErrors(self, text: str, *expected: str) -> None:
        self.assertEqual(self.errorsOf(text), list(expected))

    def routerErrors(self, body: str, protocol: str = "http") -> list[str]:
        """
        The errors of a config whose only router is C{web} on C{tcp:4140}
        with the extra YAML C{body} (indented as router keys).
        """
        extra = textwrap.indent(yamlText(body), "    ")
        text = (
            "namers:\n"
            "  - {kind: static, services: {pg: [\"127.0.0.1:5432\"]}}\n"
            "routers:\n"
            "  - name: web\n"
            f"    protocol: {protocol}\n"
            '    listen: "tcp:4140"\n'
        ) + extra
        with self.assertRaises(ConfigError) as caught:
            parseConfig(text)
        return caught.exception.errors


class ParseDurationTests(SynchronousTestCase):
    """
    Tests for L{parseDuration}.
    """

    def test_units(self) -> None:
        """
        Milliseconds, seconds, minutes and hours become float seconds.
        """
        self.assertEqual(parseDuration("250ms"), 0.25)
        self.assertEqual(parseDuration("10s"), 10.0)
        self.assertEqual(parseDuration("1.5s"), 1.5)
        self.assertEqual(parseDuration("5m"), 300.0)
        self.assertEqual(parseDuration("1h"), 3600.0)
        self.assertEqual(parseDuration("0s"), 0.0)
        self.assertIsInstance(parseDuration("10s"), float)

    def test_message(self) -> None:
        """
        The message shows what a duration looks like and what was given.
        """
        with self.assertRaises(ValueError) as caught:
            parseDuration("fast")
        self.assertEqual(str(caught.exception), 'expected a duration like "2s", got "fast"')

    def test_bareNumberHintsAtUnit(self) -> None:
        """
        A number without a unit is rejected with a hint to add one.
        """
        for value in (10, "10", 1.5):
            with self.assertRaises(ValueError) as caught:
                parseDuration(value)
            self.assertIn(f'(add a unit: "{value}s")', str(caught.exception))

    def test_tooLong(self) -> None:
        """
        A duration of hundreds of digits, which a float reads as infinity,
        is refused, as is a bare number too large for a float (where the
        hint about a unit is considered).
        """
        with self.assertRaises(ValueError) as caught:
            parseDuration("1" + "0" * 400 + "ms")
        self.assertEqual(
            str(caught.exception),
            'too long a duration, got "1' + "0" * 56 + '..."',
        )
        with self.assertRaises(ValueError) as caught:
            parseDuration(10**400)
        self.assertEqual(
            str(caught.exception), 'expected a duration like "2s", got 1' + "0" * 56 + "..."
        )

    def test_rejects(self) -> None:
        """
        Negative numbers, unknown or misspelt units, spaces, compound
        durations and non-strings are all errors.
        """
        for bad in [
            "-1s", "5d", "1S", "1 s", " 1s", "1s ", "1m30s", "1.s", ".5s",
            "1e3s", "s", "", "nans", "１s", None, True, [], -1,
        ]:
            self.assertRaises(ValueError, parseDuration, bad)


class DefaultsTests(SynchronousTestCase):
    """
    A minimal config gets the documented defaults.
    """

    def test_minimalConfig(self) -> None:
        """
        A config with only one router's name and listener equals one built
        from the classes' defaults.
        """
        config = parseConfig(MINIMAL, source="mesh.yaml")
        self.assertEqual(
            config,
            MeshConfig(
                routers=(RouterConfig(name="web", listen="tcp:4140"),),
                source="mesh.yaml",
            ),
        )

    def test_documentedDefaults(self) -> None:
        """
        The defaults are those the configuration contract documents.
        """
        router = parseConfig(MINIMAL).router("web")
        self.assertEqual(router.protocol, "http")
        self.assertEqual(
            router.identifier, IdentifierConfig(kind="host", prefix="/svc", segments=1, name=None)
        )
        self.assertEqual(router.rules, "")
        self.assertEqual(router.loadBalancer, LoadBalancerConfig(kind="ewma", decay=10.0))
        self.assertEqual(
            router.failureAccrual,
            FailureAccrualConfig(
                kind="consecutiveFailures", failures=5, backoffMin=5.0, backoffMax=300.0,
                successRate=0.8, window=None, requests=None, minRequests=10, panicShare=0.5,
                latency=None,
            ),
        )
        self.assertEqual(
            router.retries,
            RetriesConfig(
                budget=BudgetConfig(percent=20.0, minPerSecond=10.0, ttl=10.0), backoffMin=0.0,
                backoffMax=0.0, bufferBytes=65536, maxRetries=3,
            ),
        )
        self.assertEqual(
            router.classifier,
            ClassifierConfig(kind="nonRetryable5XX", retryableStatusCodes=(), idempotencyKey=False),
        )
        self.assertEqual(router.limits, LimitsConfig(maxConcurrent=None, maxPending=None))
        self.assertEqual(router.trust, TrustConfig(callers=(), dtabPrefixes=(), deadline=True))
        self.assertEqual(router.boundNames, ())
        self.assertEqual(BoundNameConfig(), BoundNameConfig(classifier=None, limits=None))
        self.assertEqual(LatencyEjectionConfig(), LatencyEjectionConfig(factor=5.0, duration=30.0))
        self.assertEqual(router.timeouts, TimeoutsConfig(total=10.0, perTry=None, connect=2.0))
        self.assertEqual(
            router.server,
            ServerConfig(
                maxHeaderBytes=65536, maxHeaders=100, maxUriLength=8192, maxBodyBytes=None,
                headerTimeout=10.0, idleTimeout=60.0, bodyTimeout=30.0, maxConnections=None,
            ),
        )
        self.assertEqual(router.client, ClientConfig(maxIdlePerEndpoint=64, idleTimeout=60.0))
        self.assertTrue(router.forwarded)
        self.assertIsNone(router.destination)
        admin = parseConfig(MINIMAL).admin
        self.assertEqual(
            admin,
            AdminConfig(
                listen="tcp:9990:interface=127.0.0.1", token=None, protectReads=False,
                shutdownGrace=10.0, stateDir=None,
            ),
        )
        self.assertEqual(StaticNamerConfig().prefix, "/#/static")
        self.assertEqual(
            FileNamerConfig(root="/x"), FileNamerConfig(prefix="/#/fs", root="/x", interval=1.0)
        )

    def test_emptySectionsReadAsDefaults(self) -> None:
        """
        A section key with an empty value (everything under it commented
        out) means the defaults, not an error.
        """
        config = parseConfig(
            yamlText(
                """
                admin:
                namers:
                routers:
                  - name: web
                    listen: "tcp:4140"
                    timeouts:
                    retries: {budget: }
                    classifier:
                    limits:
                    trust:
                    boundNames:
                """
            )
        )
        self.assertEqual(config, parseConfig(MINIMAL))

    def test_valuesAreFrozen(self) -> None:
        """
        Config values cannot be changed in place.
        """
        config = parseConfig(MINIMAL)
        self.assertRaises(ValidationError, setattr, config, "routers", ())
        self.assertRaises(ValidationError, setattr, config.routers[0].timeouts, "total", 1.0)
        self.assertEqual(hash(config), hash(parseConfig(MINIMAL)))


class FullConfigTests(SynchronousTestCase):
    """
    Every key, given a value other than its default, ends up in the values.
    """

    def test_everyKey(self) -> None:
        text = yamlText(
            f"""
            admin:
              listen: "tcp:9991:interface=127.0.0.1"
              token: s3cret
              protectReads: true
              shutdownGrace: 30s
              stateDir: /var/lib/meshproxy
            namers:
              - {{kind: file, prefix: /#/disk, root: /srv/endpoints, interval: 250ms}}
              - kind: static
                prefix: /#/static
                services:
                  users: ["127.0.0.1:8081", "users.internal:8082 2.5", "[::1]:8083 0.5"]
                  empty: []
            routers:
              - name: web
                protocol: http
                listen: "tcp:4140:interface=127.0.0.1"
                identifier: {{kind: header, prefix: /host, name: X-Service}}
                rules: |
                  /svc => /#/disk;
                loadBalancer: {{kind: ewma, decay: 5s}}
                failureAccrual:
                  kind: consecutiveFailures
                  failures: 3
                  backoffMin: 1s
                  backoffMax: 1m
                  panicShare: 0.25
                  latency: {{factor: 3, for: 1m}}
                retries:
                  budget: {{percent: 12.5, minPerSecond: 2, ttl: 30s}}
                  backoffMin: 10ms
                  backoffMax: 1s
                  bufferBytes: 1024
                  maxRetries: 5
                timeouts: {{total: 1m, perTry: 2s, connect: 500ms}}
                server:
                  maxHeaderBytes: 8192
                  maxHeaders: 50
                  maxUriLength: 2048
                  maxBodyBytes: 1000000
                  headerTimeout: 5s
                  idleTimeout: 2m
                  bodyTimeout: 15s
                  maxConnections: 1000
                client: {{maxIdlePerEndpoint: 8, idleTimeout: 30s}}
                forwarded: false
                classifier:
                  kind: retryableIdempotent5XX
                  retryableStatusCodes: [429, 503]
                  idempotencyKey: true
                limits: {{maxConcurrent: 100, maxPending: 0}}
                trust:
                  callers: ["127.0.0.1/8", "10.1.2.3", "2001:db8::/32"]
                  dtabPrefixes: [/svc, /host]
                  deadline: false
                boundNames:
                  /#/disk/users:
                    classifier: {{kind: allSuccessful}}
                    limits: {{maxConcurrent: 5}}
                  /$/inet/127.0.0.1/8080: {{limits: {{maxPending: 10}}}}
                  /#/static/users:
              - name: by-path
                listen: "ssl:4443:privateKey={SERVER_PEM}"
                identifier: {{kind: path, segments: 2}}
                loadBalancer: {{kind: roundRobin}}
                failureAccrual: {{kind: none}}
              - name: by-rate
                listen: "tcp:4141"
                failureAccrual:
                  kind: successRate
                  successRate: 0.95
                  window: 1m
                  minRequests: 20
                  backoffMin: 10s
                  backoffMax: 10s
                  panicShare: 1
                  latency: {{}}
              - name: db
                protocol: tcp
                listen: "unix:/tmp/meshproxy-db.sock"
                destination: /#/disk/postgres
            """
        )
        config = parseConfig(text, source="full.yaml")
        expected = MeshConfig(
            admin=AdminConfig(
                listen="tcp:9991:interface=127.0.0.1", token="s3cret", protectReads=True,
                shutdownGrace=30.0, stateDir="/var/lib/meshproxy",
            ),
            namers=(
                FileNamerConfig(prefix="/#/disk", root="/srv/endpoints", interval=0.25),
                StaticNamerConfig(
                    prefix="/#/static",
                    services=(
                        (
                            "users",
                            (
                                ("127.0.0.1", 8081, 1.0),
                                ("users.internal", 8082, 2.5),
                                ("::1", 8083, 0.5),
                            ),
                        ),
                        ("empty", ()),
                    ),
                ),
            ),
            routers=(
                RouterConfig(
                    name="web",
                    protocol="http",
                    listen="tcp:4140:interface=127.0.0.1",
                    identifier=IdentifierConfig(kind="header", prefix="/host", name="x-service"),
                    rules="/svc => /#/disk;\n",
                    loadBalancer=LoadBalancerConfig(kind="ewma", decay=5.0),
                    failureAccrual=FailureAccrualConfig(
                        kind="consecutiveFailures", failures=3, backoffMin=1.0, backoffMax=60.0,
                        panicShare=0.25, latency=LatencyEjectionConfig(factor=3.0, duration=60.0),
                    ),
                    retries=RetriesConfig(
                        budget=BudgetConfig(percent=12.5, minPerSecond=2.0, ttl=30.0),
                        backoffMin=0.01,
                        backoffMax=1.0,
                        bufferBytes=1024,
                        maxRetries=5,
                    ),
                    timeouts=TimeoutsConfig(total=60.0, perTry=2.0, connect=0.5),
                    server=ServerConfig(
                        maxHeaderBytes=8192, maxHeaders=50, maxUriLength=2048,
                        maxBodyBytes=1000000, headerTimeout=5.0, idleTimeout=120.0,
                        bodyTimeout=15.0, maxConnections=1000,
                    ),
                    client=ClientConfig(maxIdlePerEndpoint=8, idleTimeout=30.0),
                    forwarded=False,
                    classifier=ClassifierConfig(
                        kind="retryableIdempotent5XX", retryableStatusCodes=(429, 503),
                        idempotencyKey=True,
                    ),
                    limits=LimitsConfig(maxConcurrent=100, maxPending=0),
                    trust=TrustConfig(
                        callers=("127.0.0.0/8", "10.1.2.3/32", "2001:db8::/32"),
                        dtabPrefixes=("/svc", "/host"),
                        deadline=False,
                    ),
                    boundNames=(
                        (
                            "/#/disk/users",
                            BoundNameConfig(
                                classifier=ClassifierConfig(kind="allSuccessful"),
                                limits=LimitsConfig(maxConcurrent=5),
                            ),
                        ),
                        (
                            "/$/inet/127.0.0.1/8080",
                            BoundNameConfig(limits=LimitsConfig(maxPending=10)),
                        ),
                        ("/#/static/users", BoundNameConfig()),
                    ),
                ),
                RouterConfig(
                    name="by-path",
                    listen=f"ssl:4443:privateKey={SERVER_PEM}",
                    identifier=IdentifierConfig(kind="path", segments=2),
                    loadBalancer=LoadBalancerConfig(kind="roundRobin"),
                    failureAccrual=FailureAccrualConfig(kind="none"),
                ),
                RouterConfig(
                    name="by-rate",
                    listen="tcp:4141",
                    failureAccrual=FailureAccrualConfig(
                        kind="successRate", successRate=0.95, window=60.0, requests=None,
                        minRequests=20, backoffMin=10.0, backoffMax=10.0, panicShare=1.0,
                        latency=LatencyEjectionConfig(),
                    ),
                ),
                RouterConfig(
                    name="db",
                    protocol="tcp",
                    listen="unix:/tmp/meshproxy-db.sock",
                    destination="/#/disk/postgres",
                ),
            ),
            source="full.yaml",
        )
        self.assertEqual(config, expected)
        self.assertIsInstance(config.routers[0].retries.budget.percent, float)
        self.assertIsInstance(config.routers[0].failureAccrual.latency.factor, float)
        self.assertIsInstance(config.routers[2].failureAccrual.panicShare, float)
        self.assertEqual(
            dict(config.routers[0].boundNames)["/#/disk/users"].limits,
            LimitsConfig(maxConcurrent=5),
        )
        self.assertEqual(dict(config.namers[1].services)["empty"], ())

    def test_designSample(self) -> None:
        """
        The sample in the design's configuration contract is valid, and its
        relative file namer root is made absolute against the working
        directory.
        """
        config = parseConfig(
            yamlText(
                """
                admin:
                  listen: "tcp:9990:interface=127.0.0.1"
                  token: null
                namers:
                  - {kind: file, prefix: /#/fs, root: etc/endpoints}
                  - kind: static
                    prefix: /#/static
                    services: {users: ["127.0.0.1:8081", "127.0.0.1:8082"]}
                routers:
                  - name: web
                    protocol: http
                    listen: "tcp:4140:interface=127.0.0.1"
                    identifier: {kind: host}
                    rules: |
                      /svc => /#/fs;
                    loadBalancer: {kind: ewma}
                    failureAccrual: {kind: consecutiveFailures, failures: 5}
                    retries: {budget: {percent: 20, minPerSecond: 10, ttl: 10s}}
                    timeouts: {total: 10s, perTry: 2s}
                  - name: db
                    protocol: tcp
                    listen: "tcp:5433:interface=127.0.0.1"
                    destination: /#/fs/postgres
                """
            )
        )
        self.assertEqual(config.namers[0].root, os.path.join(os.getcwd(), "etc", "endpoints"))
        self.assertEqual([r.name for r in config.routers], ["web", "db"])
        self.assertEqual(config.router("web").timeouts.perTry, 2.0)

    def test_routerByName(self) -> None:
        """
        L{MeshConfig.router} finds a router by name or raises L{KeyError}.
        """
        config = parseConfig(MINIMAL)
        self.assertIs(config.router("web"), config.routers[0])
        self.assertRaises(KeyError, config.router, "nope")

    def test_endpointKinds(self) -> None:
        """
        Endpoint descriptions for TCP, IPv6, UNIX sockets, TLS (C{ssl:} and
        C{tls:} spellings) and systemd socket activation are accepted.
        """
        for listen in [
            "tcp:0",
            r"tcp6:4140:interface=\:\:1",
            "unix:/tmp/meshproxy.sock",
            f"ssl:4443:privateKey={SERVER_PEM}",
            f"tls:4443:privateKey={SERVER_PEM}",
            "systemd:domain=INET:index=0",
            "systemd:domain=INET6:name=web",
        ]:
            config = parseConfig(f"routers: [{{name: web, listen: '{listen}'}}]")
            self.assertEqual(config.routers[0].listen, listen)


class ErrorFormTests(SynchronousTestCase, ErrorAssertions):
    """
    Each kind of mistake gives one message naming the key path.
    """

    def test_badDuration(self) -> None:
        self.assertEqual(
            self.routerErrors("timeouts: {total: fast}"),
            ['routers[0].timeouts.total: expected a duration like "2s", got "fast"'],
        )

    def test_unknownKeySuggestsClosest(self) -> None:
        self.assertEqual(
            self.routerErrors("timeots: {total: 1s}"),
            ['routers[0].timeots: unknown key (did you mean "timeouts"?)'],
        )

    def test_unknownKeyWithoutSuggestion(self) -> None:
        self.assertEqual(
            self.routerErrors("zzz: 1"), ["routers[0].zzz: unknown key"]
        )

    def test_unknownKeyCaseSlip(self) -> None:
        self.assertEqual(
            self.routerErrors("server: {maxuri: 10, MAXHEADERS: 5}"),
            [
                'routers[0].server.maxuri: unknown key (did you mean "maxUriLength"?)',
                'routers[0].server.MAXHEADERS: unknown key (did you mean "maxHeaders"?)',
            ],
        )

    def test_unknownTopLevelKey(self) -> None:
        self.assertErrors(
            MINIMAL + "namer: []\n", 'namer: unknown key (did you mean "namers"?)'
        )

    def test_missingRequired(self) -> None:
        self.assertErrors("routers: [{name: web}]", "routers[0].listen: required")
        self.assertErrors("routers: [{listen: 'tcp:1'}]", "routers[0].name: required")
        self.assertErrors("admin: {}", "routers: required")
        self.assertErrors(
            MINIMAL + "namers: [{kind: file}]", "namers[0].root: required"
        )
        self.assertErrors(MINIMAL + "namers: [{root: /x}]", "namers[0].kind: required")
        self.assertEqual(
            self.routerErrors("", protocol="tcp"), ["routers[0].destination: required"]
        )
        self.assertEqual(
            self.routerErrors("identifier: {kind: header}"),
            ["routers[0].identifier.name: required"],
        )

    def test_noRouters(self) -> None:
        self.assertErrors("routers: []", "routers: at least one router is required")

    def test_wrongTypes(self) -> None:
        self.assertErrors(MINIMAL + "admin: [1]", "admin: expected a mapping, got a list")
        self.assertErrors("routers: {web: {}}", "routers: expected a list, got a mapping")
        self.assertErrors("routers: [web]", 'routers[0]: expected a mapping, got "web"')
        self.assertEqual(
            self.routerErrors("forwarded: 'yes'\nrules: [1]\ntimeouts: 10s"),
            [
                'routers[0].rules: expected a string, got a list',
                'routers[0].timeouts: expected a mapping, got "10s"',
                'routers[0].forwarded: expected true or false, got "yes"',
            ],
        )

    def test_integersRejectBooleans(self) -> None:
        """
        YAML's C{true} is a Python int, but not a count.
        """
        self.assertEqual(
            self.routerErrors(
                "server: {maxHeaders: true, maxBodyBytes: 1.5}\n"
                "retries: {budget: {percent: false}}"
            ),
            [
                "routers[0].retries.budget.percent: expected a number, got false",
                "routers[0].server.maxHeaders: expected an integer, got true",
                "routers[0].server.maxBodyBytes: expected an integer, got 1.5",
            ],
        )

    def test_ranges(self) -> None:
        self.assertEqual(
            self.routerErrors(
                "server: {maxHeaders: 0}\n"
                "retries: {budget: {percent: 1001, ttl: 0s}}\n"
                "identifier: {kind: path, segments: 0}\n"
                "failureAccrual: {failures: 0}\n"
                "timeouts: {connect: 0s}"
            ),
            [
                "routers[0].identifier.segments: must be at least 1, got 0",
                "routers[0].failureAccrual.failures: must be at least 1, got 0",
                "routers[0].retries.budget.percent: must be between 0 and 1000, got 1001",
                'routers[0].retries.budget.ttl: must be longer than 0s, got "0s"',
                'routers[0].timeouts.connect: must be longer than 0s, got "0s"',
                "routers[0].server.maxHeaders: must be at least 1, got 0",
            ],
        )

    def test_choices(self) -> None:
        self.assertEqual(
            self.routerErrors("loadBalancer: {kind: roundrobin}"),
            [
                'routers[0].loadBalancer.kind: expected one of "ewma", "roundRobin",'
                ' "leastLoaded", got "roundrobin" (did you mean "roundRobin"?)'
            ],
        )
        self.assertErrors(
            "routers: [{name: web, protocol: udp, listen: 'tcp:1'}]",
            'routers[0].protocol: expected one of "http", "tcp", got "udp"',
        )
        self.assertErrors(
            MINIMAL + "namers: [{kind: consul, prefix: /#/consul}]",
            'namers[0].kind: expected one of "file", "static", "dns", "etcd", got "consul"',
        )

    def test_keysOfAnotherKind(self) -> None:
        """
        A key meant for another kind or protocol is named as such.
        """
        self.assertEqual(
            self.routerErrors("server: {}\nforwarded: true", protocol="tcp")[:2],
            [
                'routers[0].server: only for protocol "http"',
                'routers[0].forwarded: only for protocol "http"',
            ],
        )
        self.assertEqual(
            self.routerErrors("destination: /#/static/pg"),
            ['routers[0].destination: only for protocol "tcp"'],
        )
        self.assertEqual(
            self.routerErrors(
                "loadBalancer: {kind: roundRobin, decay: 1s}\n"
                "identifier: {kind: host, segments: 2}"
            ),
            [
                'routers[0].identifier.segments: only for kind "path"',
                'routers[0].loadBalancer.decay: only for kind "ewma"',
            ],
        )
        self.assertErrors(
            MINIMAL + "namers: [{kind: static, root: /x}]",
            'namers[0].root: only for kind "file"',
        )

    def test_crossKeyOrder(self) -> None:
        self.assertEqual(
            self.routerErrors("timeouts: {total: 1s, perTry: 2s}"),
            ['routers[0].timeouts.perTry: must not be longer than total (1s), got "2s"'],
        )
        self.assertEqual(
            self.routerErrors("timeouts: {perTry: 11s}"),
            ['routers[0].timeouts.perTry: must not be longer than total (10s), got "11s"'],
        )
        self.assertEqual(
            self.routerErrors("retries: {backoffMin: 1s}"),
            ["routers[0].retries.backoffMin: must not be longer than backoffMax (0s, the default)"],
        )
        self.assertEqual(
            self.routerErrors("failureAccrual: {backoffMin: 1m, backoffMax: 1s}"),
            ["routers[0].failureAccrual.backoffMax: must not be shorter than backoffMin (60s)"],
        )

    def test_crossKeyCheckSkippedAfterError(self) -> None:
        """
        A bad value is reported once, not again by a check that uses it.
        """
        self.assertEqual(
            self.routerErrors("timeouts: {total: soon, perTry: 20s}"),
            ['routers[0].timeouts.total: expected a duration like "2s", got "soon"'],
        )

    def test_duplicateRouterNames(self) -> None:
        self.assertErrors(
            """
            routers:
              - {name: web, listen: "tcp:1"}
              - {name: api, listen: "tcp:2"}
              - {name: web, listen: "tcp:bad"}
            """,
            'routers[2].listen: not a valid endpoint description: port "bad" is not a number',
            'routers[2].name: "web" is already used by routers[0]',
        )

    def test_duplicateListeners(self) -> None:
        self.assertErrors(
            """
            admin: {listen: "tcp:3"}
            routers:
              - {name: web, listen: "tcp:1"}
              - {name: api, listen: "tcp:1"}
              - {name: db, protocol: tcp, listen: "tcp:3", destination: /#/fs/pg}
            namers: [{kind: file, root: /x}]
            """,
            'routers[1].listen: "tcp:1" is already used by routers[0].listen',
            'routers[2].listen: "tcp:3" is already used by admin.listen',
        )

    def test_anyPortListenersDoNotClash(self) -> None:
        """
        Port 0 asks the kernel for a free port: several listeners may.
        """
        config = parseConfig(
            """
            admin: {listen: "tcp:0:interface=127.0.0.1"}
            routers:
              - {name: web, listen: "tcp:0:interface=127.0.0.1"}
              - {name: api, listen: "tcp:0:interface=127.0.0.1"}
            """
        )
        self.assertEqual([r.listen for r in config.routers], ["tcp:0:interface=127.0.0.1"] * 2)

    def test_routerNames(self) -> None:
        self.assertErrors(
            "routers: [{name: 'web 1', listen: 'tcp:1'}]",
            'routers[0].name: may only hold letters, digits, _ and -, got "web 1"',
        )

    def test_badEndpoints(self) -> None:
        """
        Mistakes in endpoint descriptions are told in the proxy's words,
        never in the words of the Python code that parses them.
        """
        for listen, reason in [
            ("tcp:abc", 'port "abc" is not a number'),
            (
                "bogus:1",
                'unknown endpoint type "bogus" (known: ssl, systemd, tcp, tcp6, tls, unix)',
            ),
            ("tpc:1", 'unknown endpoint type "tpc" (did you mean "tcp"?)'),
            ("tcp:70000", "port must be between 0 and 65535, got 70000"),
            ("tcp", "tcp needs a port"),
            (
                "tcp:80:interfce=127.0.0.1",
                'unknown argument "interfce" (did you mean "interface"?)',
            ),
            (
                "tcp:80:colour=blue",
                'unknown argument "colour" (tcp takes port, interface, backlog)',
            ),
            ("tcp:80:127.0.0.1:5:6", 'tcp takes no more values, got "6"'),
            ("tcp:80:backlog=many", 'backlog "many" is not a number'),
            ("tcp:80:interface=a b", 'interface "a b" is not an IP address or a host name'),
            ("tcp:80\\", "ends with a lone backslash"),
            ("unix:/tmp/m.sock:mode=rw", 'mode "rw" is not an octal number like 660'),
            ("unix:/tmp/m.sock:lockfile=yes", 'lockfile must be 0 or 1, got "yes"'),
            ("ssl:443:privateKey=/nonexistent/key.pem",
             'cannot read privateKey file "/nonexistent/key.pem": No such file or directory'),
            ("tls:443:privateKey=/nonexistent/key.pem",
             'cannot read privateKey file "/nonexistent/key.pem": No such file or directory'),
            (f"ssl:443:privateKey={SERVER_PEM}:certKey=/nonexistent/cert.pem",
             'cannot read certKey file "/nonexistent/cert.pem": No such file or directory'),
            (f"ssl:443:privateKey={os.path.abspath(__file__)}",
             "cannot load the TLS certificate and private key"
             " (certKey and privateKey must hold them in PEM form)"),
            # "tls:" means "ssl:" to meshproxy.tap, not Twisted's PEM-directory parser.
            ("tls:/etc/certs:port=443", 'port is given twice ("/etc/certs" and "443")'),
            ("systemd:domain=INET", "systemd: give exactly one of index= and name="),
            (
                "systemd:domain=INET:index=x",
                'systemd: index must be a non-negative integer, got "x"',
            ),
            (
                "systemd:domain=IPX:index=0",
                'systemd: domain must be "INET", "INET6" or "UNIX", got "IPX"',
            ),
        ]:
            self.assertErrors(
                f"routers: [{{name: web, listen: '{listen}'}}]",
                f"routers[0].listen: not a valid endpoint description: {reason}",
            )
        self.assertErrors(
            MINIMAL + "admin: {listen: 'tcp:x'}",
            'admin.listen: not a valid endpoint description: port "x" is not a number',
        )
        self.assertErrors(
            "routers: [{name: web, listen: ''}]", "routers[0].listen: must not be empty"
        )

    def test_admin(self) -> None:
        self.assertErrors(
            MINIMAL + "admin: {protectReads: true, token: ''}",
            "admin.token: must not be empty",
        )
        self.assertErrors(
            MINIMAL + "admin: {protectReads: true}", "admin.protectReads: needs a token"
        )

    def test_adminHardening(self) -> None:
        config = parseConfig(
            MINIMAL
            + "admin: {allowedHosts: [Mesh.Example., admin-1.internal], rulesAllowInet: false}"
        )
        self.assertEqual(config.admin.allowedHosts, ("mesh.example", "admin-1.internal"))
        self.assertFalse(config.admin.rulesAllowInet)
        self.assertEqual(
            parseConfig(MINIMAL + "admin: {allowedHosts: ['*']}").admin.allowedHosts, ("*",)
        )
        defaults = parseConfig(MINIMAL).admin
        self.assertEqual((defaults.allowedHosts, defaults.rulesAllowInet), ((), True))

    def test_badAllowedHosts(self) -> None:
        self.assertErrors(
            MINIMAL + "admin: {allowedHosts: ['mesh.example:9990', 'http://x', '', 3, a.b, A.B]}",
            'admin.allowedHosts[0]: expected a host name such as "mesh.example" (no port,'
            ' no scheme) or "*", got "mesh.example:9990"',
            'admin.allowedHosts[1]: expected a host name such as "mesh.example" (no port,'
            ' no scheme) or "*", got "http://x"',
            'admin.allowedHosts[2]: expected a host name such as "mesh.example" (no port,'
            ' no scheme) or "*", got ""',
            "admin.allowedHosts[3]: expected a host name, got 3",
            'admin.allowedHosts[5]: "a.b" is already listed at admin.allowedHosts[4]',
        )
        self.assertErrors(
            MINIMAL + "admin: {rulesAllowInet: 1}",
            "admin.rulesAllowInet: expected true or false, got 1",
        )

    def test_clientHeadLimits(self) -> None:
        config = parseConfig(
            MINIMAL + "    client: {maxHeaderBytes: 8192, maxHeaders: 20, maxInformational: 0}\n"
        )
        client = config.routers[0].client
        self.assertEqual(
            (client.maxHeaderBytes, client.maxHeaders, client.maxInformational), (8192, 20, 0)
        )
        defaults = parseConfig(MINIMAL).routers[0].client
        self.assertEqual(
            (defaults.maxHeaderBytes, defaults.maxHeaders, defaults.maxInformational),
            (65536, 100, 10),
        )
        self.assertEqual(
            self.routerErrors("client: {maxHeaderBytes: 10, maxHeaders: 0, maxInformational: -1}"),
            [
                "routers[0].client.maxHeaderBytes: must be at least 256, got 10",
                "routers[0].client.maxHeaders: must be at least 1, got 0",
                "routers[0].client.maxInformational: must be at least 0, got -1",
            ],
        )

    def test_trustAllowInet(self) -> None:
        self.assertFalse(parseConfig(MINIMAL).routers[0].trust.allowInet)
        config = parseConfig(MINIMAL + "    trust: {callers: [127.0.0.1], allowInet: true}\n")
        self.assertTrue(config.routers[0].trust.allowInet)
        self.assertEqual(
            self.routerErrors("trust: {allowInet: maybe}"),
            ['routers[0].trust.allowInet: expected true or false, got "maybe"'],
        )

    def test_headerIdentifierNameLowercased(self) -> None:
        config = parseConfig(MINIMAL + "    identifier: {kind: header, name: X-Svc}\n")
        self.assertEqual(config.routers[0].identifier.name, "x-svc")
        self.assertEqual(
            self.routerErrors("identifier: {kind: header, name: 'x svc'}"),
            ['routers[0].identifier.name: not a valid HTTP header name: "x svc"'],
        )

    def test_paths(self) -> None:
        self.assertEqual(
            self.routerErrors("identifier: {prefix: svc}"),
            ['routers[0].identifier.prefix: expected a path starting with "/", got "svc"'],
        )
        self.assertEqual(
            self.routerErrors("destination: /#/static/a b", protocol="tcp"),
            [
                'routers[0].destination: path segment "a b" in "/#/static/a b" may only'
                " hold letters, digits and _ . : -"
            ],
        )
        self.assertEqual(
            self.routerErrors("destination: /svc/pg", protocol="tcp"),
            [
                'routers[0].destination: expected a bound name like "/#/fs/users"'
                ' or "/$/inet/<host>/<port>", got "/svc/pg" (or give rules that rewrite it)'
            ],
        )

    def test_tcpDestinationNeedsANamer(self) -> None:
        self.assertEqual(
            self.routerErrors("destination: /#/fs/pg", protocol="tcp"),
            ['routers[0].destination: no namer owns "/#/fs/pg" (namer prefixes: "/#/static")'],
        )
        self.assertEqual(
            self.routerErrors("destination: /#/static", protocol="tcp"),
            ['routers[0].destination: names no service under namer "/#/static"'],
        )


class TcpRouterTests(SynchronousTestCase, ErrorAssertions):
    """
    Validation of the keys of C{protocol: tcp} routers.
    """

    def tcpRouter(self, body: str) -> RouterConfig:
        text = (
            "namers: [{kind: static, services: {pg: [\"127.0.0.1:5432\"]}}]\n"
            "routers:\n"
            "  - name: db\n"
            "    protocol: tcp\n"
            '    listen: "tcp:5433"\n'
            "    destination: /#/static/pg\n"
        ) + textwrap.indent(yamlText(body), "    ")
        return parseConfig(text).routers[0]

    def test_defaults(self) -> None:
        """
        Two more connection attempts after a failure, no idle timeout, no
        connection limit, the HTTP router's balancer, accrual and connect
        timeout.
        """
        router = self.tcpRouter("")
        self.assertEqual(
            (router.connectRetries, router.idleTimeout, router.maxConnections), (2, None, None)
        )
        self.assertEqual(router.loadBalancer, LoadBalancerConfig())
        self.assertEqual(router.failureAccrual, FailureAccrualConfig())
        self.assertEqual(router.timeouts.connect, 2.0)

    def test_everyKey(self) -> None:
        router = self.tcpRouter(
            """
            loadBalancer: {kind: leastLoaded}
            failureAccrual: {kind: successRate, successRate: 0.5, window: 30s}
            timeouts: {connect: 500ms}
            connectRetries: 0
            idleTimeout: 5m
            maxConnections: 100
            """
        )
        self.assertEqual(router.loadBalancer, LoadBalancerConfig(kind="leastLoaded"))
        self.assertEqual(
            router.failureAccrual,
            FailureAccrualConfig(kind="successRate", successRate=0.5, window=30.0),
        )
        self.assertEqual(router.timeouts, TimeoutsConfig(connect=0.5))
        self.assertEqual(
            (router.connectRetries, router.idleTimeout, router.maxConnections), (0, 300.0, 100)
        )

    def test_nullMeansNoLimit(self) -> None:
        router = self.tcpRouter("idleTimeout: null\nmaxConnections: null")
        self.assertEqual((router.idleTimeout, router.maxConnections), (None, None))

    def test_badValues(self) -> None:
        self.assertEqual(
            self.routerErrors(
                "destination: /#/static/pg\n"
                "connectRetries: -1\n"
                "idleTimeout: 0s\n"
                "maxConnections: 0\n"
                "loadBalancer: {kind: random}\n"
                "timeouts: {connect: fast}",
                protocol="tcp",
            ),
            [
                'routers[0].loadBalancer.kind: expected one of "ewma", "roundRobin",'
                ' "leastLoaded", got "random"',
                'routers[0].timeouts.connect: expected a duration like "2s", got "fast"',
                "routers[0].connectRetries: must be at least 0, got -1",
                'routers[0].idleTimeout: must be longer than 0s, got "0s"',
                "routers[0].maxConnections: must be at least 1, got 0",
            ],
        )
        self.assertEqual(
            self.routerErrors(
                "destination: /#/static/pg\nconnectRetries: true\nidleTimeout: 30\n"
                "maxConnections: 1.5",
                protocol="tcp",
            ),
            [
                "routers[0].connectRetries: expected an integer, got true",
                'routers[0].idleTimeout: expected a duration like "2s", got 30 (add a unit: "30s")',
                "routers[0].maxConnections: expected an integer, got 1.5",
            ],
        )

    def test_requestTimeoutsAreHttpOnly(self) -> None:
        """
        A TCP router sees no requests: of the timeouts, only C{connect}.
        """
        self.assertEqual(
            self.routerErrors(
                "destination: /#/static/pg\ntimeouts: {total: 1s, perTry: 1s, conect: 1s}",
                protocol="tcp",
            ),
            [
                'routers[0].timeouts.total: only for protocol "http"',
                'routers[0].timeouts.perTry: only for protocol "http"',
                'routers[0].timeouts.conect: unknown key (did you mean "connect"?)',
            ],
        )

    def test_tcpKeysOnHttp(self) -> None:
        self.assertEqual(
            self.routerErrors("connectRetries: 1\nidleTimeout: 1s\nmaxConnections: 1"),
            [
                'routers[0].connectRetries: only for protocol "tcp"',
                'routers[0].idleTimeout: only for protocol "tcp"',
                'routers[0].maxConnections: only for protocol "tcp"',
            ],
        )

    def test_httpKeysStillRefused(self) -> None:
        self.assertEqual(
            self.routerErrors(
                "destination: /#/static/pg\nserver: {}\nclient: {}\n"
                "forwarded: true",
                protocol="tcp",
            ),
            [
                'routers[0].server: only for protocol "http"',
                'routers[0].client: only for protocol "http"',
                'routers[0].forwarded: only for protocol "http"',
            ],
        )


class Http2Tests(SynchronousTestCase, ErrorAssertions):
    """
    Validation of C{routers[].http2}.
    """

    def test_defaults(self) -> None:
        http2 = parseConfig(yamlText(MINIMAL)).routers[0].http2
        self.assertEqual(
            (
                http2.maxConcurrentStreams,
                http2.initialWindowSize,
                http2.maxFrameSize,
                http2.maxHeaderListSize,
            ),
            (100, 65535, 16384, None),
        )

    def test_values(self) -> None:
        [router] = parseConfig(
            yamlText(MINIMAL)
            + "    http2: {maxConcurrentStreams: 7, initialWindowSize: 1048576,"
            " maxFrameSize: 65536, maxHeaderListSize: 8192}\n"
        ).routers
        self.assertEqual(router.http2.maxConcurrentStreams, 7)
        self.assertEqual(router.http2.initialWindowSize, 1048576)
        self.assertEqual(router.http2.maxFrameSize, 65536)
        self.assertEqual(router.http2.maxHeaderListSize, 8192)

    def test_errors(self) -> None:
        self.assertEqual(
            self.routerErrors(
                "http2: {maxConcurrentStreams: 0, initialWindowSize: 2147483648,"
                " maxFrameSize: 100, maxHeaderListSize: x, push: true}"
            ),
            [
                "routers[0].http2.push: unknown key",
                "routers[0].http2.maxConcurrentStreams: must be between 1 and 2147483647, got 0",
                "routers[0].http2.initialWindowSize: must be between 1 and 2147483647,"
                " got 2147483648",
                "routers[0].http2.maxFrameSize: must be between 16384 and 16777215, got 100",
                'routers[0].http2.maxHeaderListSize: expected an integer, got "x"',
            ],
        )

    def test_httpOnly(self) -> None:
        self.assertEqual(
            self.routerErrors("destination: /#/static/pg\nhttp2: {}", protocol="tcp"),
            ['routers[0].http2: only for protocol "http"'],
        )


class ClassifierTests(SynchronousTestCase, ErrorAssertions):
    """
    Validation of C{routers[].classifier}.
    """

    def test_kinds(self) -> None:
        for kind in [
            "nonRetryable5XX",
            "retryableRead5XX",
            "retryableIdempotent5XX",
            "allSuccessful",
        ]:
            config = parseConfig(MINIMAL + f"    classifier: {{kind: {kind}}}\n")
            self.assertEqual(config.routers[0].classifier, ClassifierConfig(kind=kind))

    def test_badKind(self) -> None:
        self.assertEqual(
            self.routerErrors("classifier: {kind: retryableread5xx}"),
            [
                'routers[0].classifier.kind: expected one of "nonRetryable5XX",'
                ' "retryableRead5XX", "retryableIdempotent5XX", "allSuccessful", "grpc",'
                ' got "retryableread5xx" (did you mean "retryableRead5XX"?)'
            ],
        )

    def test_retryableStatusCodesKeepOrder(self) -> None:
        config = parseConfig(
            MINIMAL
            + "    classifier: {retryableStatusCodes: [503, 100, 599, 429], idempotencyKey: true}\n"
        )
        self.assertEqual(
            config.routers[0].classifier,
            ClassifierConfig(retryableStatusCodes=(503, 100, 599, 429), idempotencyKey=True),
        )

    def test_badRetryableStatusCodes(self) -> None:
        """
        Each bad status code is named by its index: out of range, a boolean,
        a string, or a repeat of an earlier one.
        """
        self.assertEqual(
            self.routerErrors(
                "classifier: {retryableStatusCodes: [503, 99, 600, true, '502', 502.0, 503]}"
            ),
            [
                "routers[0].classifier.retryableStatusCodes[1]:"
                " must be between 100 and 599, got 99",
                "routers[0].classifier.retryableStatusCodes[2]:"
                " must be between 100 and 599, got 600",
                "routers[0].classifier.retryableStatusCodes[3]: expected an integer, got true",
                'routers[0].classifier.retryableStatusCodes[4]: expected an integer, got "502"',
                "routers[0].classifier.retryableStatusCodes[5]: expected an integer, got 502.0",
                "routers[0].classifier.retryableStatusCodes[6]: 503 is already listed at"
                " routers[0].classifier.retryableStatusCodes[0]",
            ],
        )
        self.assertEqual(
            self.routerErrors("classifier: {retryableStatusCodes: 503, idempotencyKey: 1}"),
            [
                "routers[0].classifier.retryableStatusCodes: expected a list, got 503",
                "routers[0].classifier.idempotencyKey: expected true or false, got 1",
            ],
        )

    def test_unknownKey(self) -> None:
        self.assertEqual(
            self.routerErrors("classifier: {retryableStatus: [503]}"),
            [
                "routers[0].classifier.retryableStatus:"
                ' unknown key (did you mean "retryableStatusCodes"?)'
            ],
        )
        self.assertEqual(
            self.routerErrors("classifier: {retryableCodes: [UNAVAILABLE]}"),
            ['routers[0].classifier.retryableCodes: only for kind "grpc"'],
        )

    def test_grpc(self) -> None:
        """
        The grpc kind retries UNAVAILABLE by default; its codes are the
        spec's names (case-sensitive) or numbers, kept as names, each once.
        """
        config = parseConfig(MINIMAL + "    classifier: {kind: grpc}\n")
        self.assertEqual(config.routers[0].classifier.retryableCodes, ("UNAVAILABLE",))
        config = parseConfig(
            MINIMAL + "    classifier: {kind: grpc, retryableCodes: [8, DEADLINE_EXCEEDED]}\n"
        )
        self.assertEqual(
            config.routers[0].classifier.retryableCodes,
            ("RESOURCE_EXHAUSTED", "DEADLINE_EXCEEDED"),
        )
        self.assertEqual(
            self.routerErrors(
                "classifier: {kind: grpc, retryableCodes: [unavailable, 17, UNAVAILBLE, true,"
                " 14, UNAVAILABLE]}"
            ),
            [
                "routers[0].classifier.retryableCodes[0]: expected a gRPC status code name or"
                ' number, got "unavailable" (did you mean "UNAVAILABLE"? names are'
                " case-sensitive)",
                "routers[0].classifier.retryableCodes[1]: gRPC status codes are 0 to 16, got 17",
                "routers[0].classifier.retryableCodes[2]: expected a gRPC status code name or"
                ' number, got "UNAVAILBLE" (did you mean "UNAVAILABLE"?)',
                "routers[0].classifier.retryableCodes[3]: expected a gRPC status code name or"
                " number, got true",
                'routers[0].classifier.retryableCodes[5]: "UNAVAILABLE" is already listed at'
                " routers[0].classifier.retryableCodes[4]",
            ],
        )

    def test_grpcMethods(self) -> None:
        config = parseConfig(
            MINIMAL + "    grpc: {methods: [/pkg.v1.Greeter/Hello, /pkg.Other/*]}\n"
        )
        self.assertEqual(
            config.routers[0].grpc.methods, ("/pkg.v1.Greeter/Hello", "/pkg.Other/*")
        )
        self.assertEqual(parseConfig(MINIMAL).routers[0].grpc.methods, ())
        self.assertEqual(
            self.routerErrors(
                "grpc: {methods: [pkg.A/B, /pkg.A/B/C, /pkg.A/*x, /A/B, /A/B, 7]}"
            ),
            [
                'routers[0].grpc.methods[0]: expected "/package.Service/Method" or'
                ' "/package.Service/*", got "pkg.A/B"',
                'routers[0].grpc.methods[1]: expected "/package.Service/Method" or'
                ' "/package.Service/*", got "/pkg.A/B/C"',
                'routers[0].grpc.methods[2]: expected "/package.Service/Method" or'
                ' "/package.Service/*", got "/pkg.A/*x"',
                'routers[0].grpc.methods[4]: "/A/B" is already listed at'
                " routers[0].grpc.methods[3]",
                'routers[0].grpc.methods[5]: expected "/package.Service/Method" or'
                ' "/package.Service/*", got 7',
            ],
        )

    def test_httpOnly(self) -> None:
        self.assertEqual(
            self.routerErrors(
                "destination: /#/static/pg\nclassifier: {}\nlimits: {}\ntrust: {}\nboundNames: {}",
                protocol="tcp",
            ),
            [
                'routers[0].classifier: only for protocol "http"',
                'routers[0].limits: only for protocol "http"',
                'routers[0].trust: only for protocol "http"',
            ],
        )


class SuccessRateAccrualTests(SynchronousTestCase, ErrorAssertions):
    """
    Validation of the C{successRate} kind of C{routers[].failureAccrual} and
    of the keys it shares with C{consecutiveFailures}.
    """

    def accrual(self, body: str) -> FailureAccrualConfig:
        return parseConfig(MINIMAL + f"    failureAccrual: {body}\n").routers[0].failureAccrual

    def test_defaultsToAWindowOf100Requests(self) -> None:
        """
        Without C{requests} or C{window}, the effective window of the last
        100 requests is stored; the class default agrees.
        """
        expected = FailureAccrualConfig(
            kind="successRate", failures=5, backoffMin=5.0, backoffMax=300.0, successRate=0.8,
            window=None, requests=100, minRequests=10, panicShare=0.5, latency=None,
        )
        self.assertEqual(self.accrual("{kind: successRate}"), expected)
        self.assertEqual(self.accrual("{kind: successRate, requests: null}"), expected)
        self.assertEqual(FailureAccrualConfig(kind="successRate"), expected)
        self.assertIsNone(FailureAccrualConfig(kind="successRate", window=10.0).requests)
        self.assertIsNone(FailureAccrualConfig().requests)

    def test_requests(self) -> None:
        config = self.accrual("{kind: successRate, successRate: 1, requests: 1}")
        self.assertEqual((config.successRate, config.requests, config.window), (1.0, 1, None))
        self.assertIsInstance(config.successRate, float)

    def test_window(self) -> None:
        config = self.accrual("{kind: successRate, successRate: 0.5, window: 30s, minRequests: 1}")
        self.assertEqual(
            (config.successRate, config.requests, config.window, config.minRequests),
            (0.5, None, 30.0, 1),
        )

    def test_sharedKeys(self) -> None:
        """
        C{panicShare} and C{latency} are read for both ejecting kinds;
        C{latency}'s C{for} key is the C{duration} attribute.
        """
        for kind in ["consecutiveFailures", "successRate"]:
            config = self.accrual(
                f"{{kind: {kind}, panicShare: 0, latency: {{factor: 1.5, for: 250ms}}}}"
            )
            self.assertEqual(config.panicShare, 0.0)
            self.assertEqual(config.latency, LatencyEjectionConfig(factor=1.5, duration=0.25))
            self.assertIsNone(self.accrual(f"{{kind: {kind}, latency: null}}").latency)
            self.assertEqual(
                self.accrual(f"{{kind: {kind}, latency: {{}}}}").latency, LatencyEjectionConfig()
            )

    def test_ranges(self) -> None:
        self.assertEqual(
            self.routerErrors(
                "failureAccrual:\n"
                "  kind: successRate\n"
                "  successRate: 0\n"
                "  window: 0s\n"
                "  minRequests: 0\n"
                "  panicShare: -0.1\n"
                "  latency: {factor: 1, for: 0s}\n"
            ),
            [
                "routers[0].failureAccrual.successRate: must be more than 0 and at most 1, got 0",
                'routers[0].failureAccrual.window: must be longer than 0s, got "0s"',
                "routers[0].failureAccrual.minRequests: must be at least 1, got 0",
                "routers[0].failureAccrual.panicShare: must be between 0 and 1, got -0.1",
                "routers[0].failureAccrual.latency.factor: must be more than 1, got 1",
                'routers[0].failureAccrual.latency.for: must be longer than 0s, got "0s"',
            ],
        )
        self.assertEqual(
            self.routerErrors(
                "failureAccrual: {kind: successRate, successRate: 1.01, requests: 0,"
                " panicShare: 1.5, latency: {factor: 0.5}}"
            ),
            [
                "routers[0].failureAccrual.successRate:"
                " must be more than 0 and at most 1, got 1.01",
                "routers[0].failureAccrual.requests: must be at least 1, got 0",
                "routers[0].failureAccrual.panicShare: must be between 0 and 1, got 1.5",
                "routers[0].failureAccrual.latency.factor: must be more than 1, got 0.5",
            ],
        )

    def test_types(self) -> None:
        self.assertEqual(
            self.routerErrors(
                "failureAccrual: {kind: successRate, successRate: '80%', requests: true,"
                " panicShare: .nan, latency: 5}"
            ),
            [
                'routers[0].failureAccrual.successRate: expected a number, got "80%"',
                "routers[0].failureAccrual.requests: expected an integer, got true",
                "routers[0].failureAccrual.panicShare: expected a finite number, got nan",
                "routers[0].failureAccrual.latency: expected a mapping, got 5",
            ],
        )
        self.assertEqual(
            self.routerErrors("failureAccrual: {latency: {factor: 2, for: 30, after: 1s}}"),
            [
                'routers[0].failureAccrual.latency.after: unknown key',
                'routers[0].failureAccrual.latency.for: expected a duration like "2s", got 30'
                ' (add a unit: "30s")',
            ],
        )

    def test_requestsAndWindowAreExclusive(self) -> None:
        self.assertEqual(
            self.routerErrors("failureAccrual: {kind: successRate, requests: 50, window: 30s}"),
            ["routers[0].failureAccrual.window: give either requests or window, not both"],
        )
        # A bad value is still a value given.
        self.assertEqual(
            self.routerErrors("failureAccrual: {kind: successRate, requests: 0, window: 30s}"),
            [
                "routers[0].failureAccrual.requests: must be at least 1, got 0",
                "routers[0].failureAccrual.window: give either requests or window, not both",
            ],
        )
        self.assertEqual(
            self.accrual("{kind: successRate, requests: null, window: 30s}").window, 30.0
        )

    def test_minRequestsOnlyWithWindow(self) -> None:
        for body in ["{minRequests: 5}", "{requests: 50, minRequests: 5}"]:
            self.assertEqual(
                self.routerErrors(f"failureAccrual: {{kind: successRate, {body[1:]}"),
                ["routers[0].failureAccrual.minRequests: only with window"],
            )

    def test_keysOfAnotherKind(self) -> None:
        self.assertEqual(
            self.routerErrors(
                "failureAccrual: {kind: consecutiveFailures, successRate: 0.9, requests: 5,"
                " window: 1s, minRequests: 2}"
            ),
            [
                'routers[0].failureAccrual.successRate: only for kind "successRate"',
                'routers[0].failureAccrual.requests: only for kind "successRate"',
                'routers[0].failureAccrual.window: only for kind "successRate"',
                'routers[0].failureAccrual.minRequests: only for kind "successRate"',
            ],
        )
        self.assertEqual(
            self.routerErrors("failureAccrual: {kind: successRate, failures: 3}"),
            ['routers[0].failureAccrual.failures: only for kind "consecutiveFailures"'],
        )
        self.assertEqual(
            self.routerErrors(
                "failureAccrual:"
                " {kind: none, backoffMin: 1s, panicShare: 0.5, latency: {}, window: 1s}"
            ),
            [
                'routers[0].failureAccrual.backoffMin:'
                ' only for kind "consecutiveFailures" or kind "successRate"',
                'routers[0].failureAccrual.panicShare:'
                ' only for kind "consecutiveFailures" or kind "successRate"',
                'routers[0].failureAccrual.latency:'
                ' only for kind "consecutiveFailures" or kind "successRate"',
                'routers[0].failureAccrual.window: only for kind "successRate"',
            ],
        )
        self.assertEqual(
            self.routerErrors("failureAccrual: {kind: successRat}"),
            [
                'routers[0].failureAccrual.kind: expected one of "consecutiveFailures",'
                ' "successRate", "none", got "successRat" (did you mean "successRate"?)'
            ],
        )

    def test_backoffOrder(self) -> None:
        self.assertEqual(
            self.routerErrors("failureAccrual: {kind: successRate, backoffMin: 10m}"),
            [
                "routers[0].failureAccrual.backoffMin:"
                " must not be longer than backoffMax (300s, the default)"
            ],
        )


class RetriesTests(SynchronousTestCase, ErrorAssertions):
    """
    Validation of the replay buffer and retry bound of C{routers[].retries}.
    """

    def test_goodValues(self) -> None:
        config = parseConfig(MINIMAL + "    retries: {bufferBytes: 0, maxRetries: 0}\n")
        retries = config.routers[0].retries
        self.assertEqual(retries, RetriesConfig(bufferBytes=0, maxRetries=0))

    def test_badValues(self) -> None:
        self.assertEqual(
            self.routerErrors("retries: {bufferBytes: -1, maxRetries: -1}"),
            [
                "routers[0].retries.bufferBytes: must be at least 0, got -1",
                "routers[0].retries.maxRetries: must be at least 0, got -1",
            ],
        )
        self.assertEqual(
            self.routerErrors("retries: {bufferBytes: 64k, maxRetries: 1.5}"),
            [
                'routers[0].retries.bufferBytes: expected an integer, got "64k"',
                "routers[0].retries.maxRetries: expected an integer, got 1.5",
            ],
        )


class LimitsTests(SynchronousTestCase, ErrorAssertions):
    """
    Validation of C{routers[].limits}.
    """

    def test_goodValues(self) -> None:
        config = parseConfig(MINIMAL + "    limits: {maxConcurrent: 1, maxPending: 0}\n")
        self.assertEqual(config.routers[0].limits, LimitsConfig(maxConcurrent=1, maxPending=0))
        config = parseConfig(MINIMAL + "    limits: {maxConcurrent: null, maxPending: null}\n")
        self.assertEqual(config.routers[0].limits, LimitsConfig())

    def test_badValues(self) -> None:
        self.assertEqual(
            self.routerErrors("limits: {maxConcurrent: 0, maxPending: -1}"),
            [
                "routers[0].limits.maxConcurrent: must be at least 1, got 0",
                "routers[0].limits.maxPending: must be at least 0, got -1",
            ],
        )
        self.assertEqual(
            self.routerErrors("limits: {maxConcurrent: true, maxPendng: 1}"),
            [
                'routers[0].limits.maxPendng: unknown key (did you mean "maxPending"?)',
                "routers[0].limits.maxConcurrent: expected an integer, got true",
            ],
        )
        self.assertEqual(
            self.routerErrors("limits: 10"), ["routers[0].limits: expected a mapping, got 10"]
        )


class TrustTests(SynchronousTestCase, ErrorAssertions):
    """
    Validation of C{routers[].trust}.
    """

    def test_normalisedCallers(self) -> None:
        """
        Addresses and networks are stored in normal form: host bits cleared,
        a single address as a one-address network, a netmask as a length.
        """
        config = parseConfig(
            MINIMAL
            + "    trust: {callers: ['127.0.0.1/8', '10.0.0.1', '192.168.0.0/255.255.0.0',"
            " '::1', '2001:DB8::1/32']}\n"
        )
        self.assertEqual(
            config.routers[0].trust,
            TrustConfig(
                callers=("127.0.0.0/8", "10.0.0.1/32", "192.168.0.0/16", "::1/128", "2001:db8::/32")
            ),
        )

    def test_dtabPrefixesAndDeadline(self) -> None:
        config = parseConfig(
            MINIMAL + "    trust: {dtabPrefixes: [/svc, /svc/users, /], deadline: false}\n"
        )
        self.assertEqual(
            config.routers[0].trust,
            TrustConfig(dtabPrefixes=("/svc", "/svc/users", "/"), deadline=False),
        )

    def test_badCallers(self) -> None:
        self.assertEqual(
            self.routerErrors(
                "trust:\n"
                "  callers:\n"
                "    - 10.0.0.0/33\n"
                "    - 10.0.0.0/\n"
                "    - 10.0.0.0/0.255.0.0\n"
                "    - 10.1/8\n"
                "    - localhost\n"
                "    - 167772161\n"
                "    - fe80::1%eth0\n"
                "    - ' 10.0.0.1'\n"
            ),
            [
                'routers[0].trust.callers[0]: not a valid prefix length or netmask: "33"'
                ' in "10.0.0.0/33"',
                'routers[0].trust.callers[1]: not a valid prefix length or netmask: ""'
                ' in "10.0.0.0/"',
                'routers[0].trust.callers[2]: not a valid prefix length or netmask: "0.255.0.0"'
                ' in "10.0.0.0/0.255.0.0"',
                'routers[0].trust.callers[3]:'
                ' expected an IP address or a network like "10.0.0.0/8",'
                ' got "10.1/8"',
                'routers[0].trust.callers[4]:'
                ' expected an IP address or a network like "10.0.0.0/8",'
                ' got "localhost"',
                'routers[0].trust.callers[5]:'
                ' expected an IP address or a network like "10.0.0.0/8",'
                " got 167772161",
                "routers[0].trust.callers[6]:"
                ' an address with a scope cannot name callers, got "fe80::1%eth0"',
                'routers[0].trust.callers[7]:'
                ' expected an IP address or a network like "10.0.0.0/8",'
                ' got " 10.0.0.1"',
            ],
        )
        self.assertEqual(
            self.routerErrors("trust: {callers: 127.0.0.1}"),
            ['routers[0].trust.callers: expected a list, got "127.0.0.1"'],
        )

    def test_badDtabPrefixesAndDeadline(self) -> None:
        self.assertEqual(
            self.routerErrors("trust: {dtabPrefixes: [svc, '/a//b', '/a b', 1], deadline: 'yes'}"),
            [
                'routers[0].trust.dtabPrefixes[0]: expected a path starting with "/", got "svc"',
                'routers[0].trust.dtabPrefixes[1]: empty path segment in "/a//b"',
                'routers[0].trust.dtabPrefixes[2]: path segment "a b" in "/a b" may only hold'
                " letters, digits and _ . : -",
                "routers[0].trust.dtabPrefixes[3]: expected a string, got 1",
                'routers[0].trust.deadline: expected true or false, got "yes"',
            ],
        )


BOUND_NAMES_CONFIG = """
namers:
  - {kind: file, prefix: /#/fs, root: /srv/endpoints}
  - {kind: static, prefix: /#/fs/eu, services: {users: ["127.0.0.1:8081"]}}
routers:
  - name: web
    listen: "tcp:4140"
    boundNames:
"""


class BoundNamesTests(SynchronousTestCase, ErrorAssertions):
    """
    Validation of C{routers[].boundNames}.
    """

    def boundNames(self, body: str) -> tuple:
        text = BOUND_NAMES_CONFIG + textwrap.indent(yamlText(body), "      ")
        return parseConfig(text).routers[0].boundNames

    def boundNameErrors(self, body: str) -> list[str]:
        return self.errorsOf(BOUND_NAMES_CONFIG + textwrap.indent(yamlText(body), "      "))

    def test_goodNamesInOrder(self) -> None:
        """
        Names under a namer and fixed addresses are kept in the order
        written, an empty value or C{null} settings meaning the router's.
        """
        self.assertEqual(
            self.boundNames(
                """
                /#/fs/users:
                  classifier: {kind: retryableRead5XX, retryableStatusCodes: [503]}
                  limits: {maxConcurrent: 10, maxPending: 5}
                /#/fs/eu/users: {classifier: null, limits: {}}
                "/$/inet/127.0.0.1/8080":
                "/$/inet/::1/80": {classifier: {}}
                """
            ),
            (
                (
                    "/#/fs/users",
                    BoundNameConfig(
                        classifier=ClassifierConfig(
                            kind="retryableRead5XX", retryableStatusCodes=(503,)
                        ),
                        limits=LimitsConfig(maxConcurrent=10, maxPending=5),
                    ),
                ),
                ("/#/fs/eu/users", BoundNameConfig(limits=LimitsConfig())),
                ("/$/inet/127.0.0.1/8080", BoundNameConfig()),
                ("/$/inet/::1/80", BoundNameConfig(classifier=ClassifierConfig())),
            ),
        )

    def test_errorsNamedByBoundName(self) -> None:
        self.assertEqual(
            self.boundNameErrors(
                """
                /#/fs/users:
                  limits: {maxConcurrent: 0, maxPending: -1}
                  classifier: {retryableStatusCodes: [600]}
                  limit: {}
                /#/fs/api: 5
                """
            ),
            [
                'routers[0].boundNames["/#/fs/users"].limit: unknown key (did you mean "limits"?)',
                'routers[0].boundNames["/#/fs/users"].classifier.retryableStatusCodes[0]:'
                " must be between 100 and 599, got 600",
                'routers[0].boundNames["/#/fs/users"].limits.maxConcurrent:'
                " must be at least 1, got 0",
                'routers[0].boundNames["/#/fs/users"].limits.maxPending:'
                " must be at least 0, got -1",
                'routers[0].boundNames["/#/fs/api"]: expected a mapping, got 5',
            ],
        )

    def test_badNames(self) -> None:
        self.assertEqual(
            self.boundNameErrors(
                """
                /svc/users: {}
                users: {}
                /#/fs/a b: {}
                /#/fs//users: {}
                /$/inet/127.0.0.1: {}
                /$/inet/127.0.0.1/0: {}
                /$/inet/127.0.0.1/http: {}
                /$/inet/127.0.0.1/80/x: {}
                /$/dns/example.com/80: {}
                1: {}
                """
            ),
            [
                'routers[0].boundNames["/svc/users"]: expected a bound name like "/#/fs/users"'
                ' or "/$/inet/<host>/<port>", got "/svc/users"',
                'routers[0].boundNames.users: expected a bound name like "/#/fs/users"'
                ' or "/$/inet/<host>/<port>", got "users"',
                'routers[0].boundNames["/#/fs/a b"]: path segment "a b" in "/#/fs/a b" may only'
                " hold letters, digits and _ . : -",
                'routers[0].boundNames["/#/fs//users"]: empty path segment in "/#/fs//users"',
                'routers[0].boundNames["/$/inet/127.0.0.1"]: expected "/$/inet/<host>/<port>",'
                ' got "/$/inet/127.0.0.1"',
                'routers[0].boundNames["/$/inet/127.0.0.1/0"]:'
                ' port must be between 1 and 65535, got "0"',
                'routers[0].boundNames["/$/inet/127.0.0.1/http"]: port must be between 1 and 65535,'
                ' got "http"',
                'routers[0].boundNames["/$/inet/127.0.0.1/80/x"]: expected "/$/inet/<host>/<port>",'
                ' got "/$/inet/127.0.0.1/80/x"',
                'routers[0].boundNames["/$/dns/example.com/80"]: expected "/$/inet/<host>/<port>",'
                ' got "/$/dns/example.com/80"',
                "routers[0].boundNames: keys must be strings, got 1",
            ],
        )
        self.assertEqual(
            self.routerErrors("boundNames: [/#/static/pg]"),
            ["routers[0].boundNames: expected a mapping of bound name to settings, got a list"],
        )

    def test_namesANamerOwns(self) -> None:
        """
        A name must be one that delegation can bind: a configured namer's
        prefix (the longest that matches) and one service name.
        """
        self.assertEqual(
            self.boundNameErrors(
                """
                /#/k8s/users: {}
                /#/fs: {}
                /#/fs/users/v2: {}
                /#/fs/eu/users/v2: {}
                """
            ),
            [
                'routers[0].boundNames["/#/k8s/users"]: no namer owns "/#/k8s/users"'
                ' (namer prefixes: "/#/fs", "/#/fs/eu")',
                'routers[0].boundNames["/#/fs"]: names no service under namer "/#/fs"',
                'routers[0].boundNames["/#/fs/users/v2"]: names a path below the bound name'
                ' "/#/fs/users" (namer "/#/fs" and one service name)',
                'routers[0].boundNames["/#/fs/eu/users/v2"]: names a path below the bound name'
                ' "/#/fs/eu/users" (namer "/#/fs/eu" and one service name)',
            ],
        )
        self.assertErrors(
            MINIMAL + "    boundNames: {/#/fs/users: {}}\n",
            'routers[0].boundNames["/#/fs/users"]:'
            ' no namer owns "/#/fs/users" (namer prefixes: none)',
        )

    def test_ownershipNotCheckedAgainstBadNamers(self) -> None:
        """
        With an error in the namers, a bound name is not also reported as
        owned by no namer.
        """
        self.assertErrors(
            MINIMAL + "    boundNames: {/#/fs/users: {}}\nnamers: [{kind: file}]\n",
            "namers[0].root: required",
        )


class AdminSettingsTests(SynchronousTestCase, ErrorAssertions):
    """
    Validation of C{admin.shutdownGrace} and C{admin.stateDir}.
    """

    def test_goodValues(self) -> None:
        admin = parseConfig(MINIMAL + "admin: {shutdownGrace: 0s, stateDir: var/state}\n").admin
        self.assertEqual(admin.shutdownGrace, 0.0)
        self.assertEqual(admin.stateDir, os.path.join(os.getcwd(), "var", "state"))
        admin = parseConfig(MINIMAL + "admin: {shutdownGrace: 1m, stateDir: null}\n").admin
        self.assertEqual((admin.shutdownGrace, admin.stateDir), (60.0, None))

    def test_stateDirNotCheckedForExistence(self) -> None:
        missing = os.path.abspath(self.mktemp())
        admin = parseConfig(MINIMAL + f"admin: {{stateDir: '{missing}'}}\n").admin
        self.assertEqual(admin.stateDir, missing)
        self.assertFalse(os.path.exists(missing))

    def test_badValues(self) -> None:
        self.assertErrors(
            MINIMAL + "admin: {shutdownGrace: -1s, stateDir: ''}",
            'admin.shutdownGrace: expected a duration like "2s", got "-1s"',
            "admin.stateDir: must not be empty",
        )
        self.assertErrors(
            MINIMAL + "admin: {shutdownGrace: 10, stateDir: [a], stateDirectory: x}",
            'admin.stateDirectory: unknown key (did you mean "stateDir"?)',
            'admin.shutdownGrace: expected a duration like "2s", got 10 (add a unit: "10s")',
            "admin.stateDir: expected a string, got a list",
        )


class NamerTests(SynchronousTestCase, ErrorAssertions):
    """
    Validation of the namers section.
    """

    def test_prefixes(self) -> None:
        self.assertErrors(
            MINIMAL
            + yamlText(
                """
                namers:
                  - {kind: file, root: /a}
                  - {kind: file, prefix: /#/fs, root: /b}
                  - {kind: static, prefix: /static}
                  - {kind: static, prefix: "/#/a//b"}
                  - {kind: static, prefix: "/#/"}
                  - {kind: static, prefix: "/#/a b"}
                """
            ),
            'namers[1].prefix: "/#/fs" is already used by namers[0]',
            'namers[2].prefix: must start with "/#/", got "/static"',
            'namers[3].prefix: empty path segment in "/#/a//b"',
            'namers[4].prefix: empty path segment in "/#/"',
            'namers[5].prefix:'
            ' path segment "a b" in "/#/a b" may only hold letters, digits and _ . : -',
        )

    def test_fileRootResolvedAgainstWorkingDirectory(self) -> None:
        config = parseConfig(MINIMAL + "namers: [{kind: file, root: endpoints, interval: 2s}]")
        self.assertEqual(
            config.namers[0],
            FileNamerConfig(root=os.path.join(os.getcwd(), "endpoints"), interval=2.0),
        )
        self.assertErrors(
            MINIMAL + "namers: [{kind: file, root: /x, interval: 0s}]",
            'namers[0].interval: must be longer than 0s, got "0s"',
        )

    def test_staticAddresses(self) -> None:
        config = parseConfig(
            MINIMAL
            + yamlText(
                """
                namers:
                  - kind: static
                    services:
                      a:
                        - "10.0.0.1:80"
                        - "[2001:db8::1]:443 3"
                        - "db-1.example.com.:5432 .5"
                        - "my_host:1"
                """
            )
        )
        self.assertEqual(
            config.namers[0].services,
            (
                (
                    "a",
                    (
                        ("10.0.0.1", 80, 1.0),
                        ("2001:db8::1", 443, 3.0),
                        ("db-1.example.com.", 5432, 0.5),
                        ("my_host", 1, 1.0),
                    ),
                ),
            ),
        )

    def test_badStaticAddresses(self) -> None:
        errors = self.errorsOf(
            MINIMAL
            + yamlText(
                """
                namers:
                  - kind: static
                    services:
                      a:
                        - "10.0.0.1"
                        - "10.0.0.1:0"
                        - "10.0.0.1:65536"
                        - "10.0.0.1:http"
                        - "::1:80"
                        - "[::g]:80"
                        - "[::1]80"
                        - "10.1:80"
                        - "-bad-.example:80"
                        - "10.0.0.1:80 0"
                        - "10.0.0.1:80 -1"
                        - "10.0.0.1:80 heavy"
                        - "10.0.0.1:80 1 2"
                        - 8080
                      b: "10.0.0.1:80"
                      "c d": []
                """
            )
        )
        self.assertEqual(
            errors,
            [
                "namers[0].services.a[0]:"
                ' expected "host:port" or "host:port weight", got "10.0.0.1" (no port)',
                'namers[0].services.a[1]: port must be between 1 and 65535, got "0"',
                'namers[0].services.a[2]: port must be between 1 and 65535, got "65536"',
                'namers[0].services.a[3]: port must be between 1 and 65535, got "http"',
                "namers[0].services.a[4]:"
                ' an IPv6 address goes in brackets, like "[::1]:80", got "::1:80"',
                'namers[0].services.a[5]: not an IPv6 address: "::g"',
                'namers[0].services.a[6]: expected "[IPv6 address]:port", got "[::1]80"',
                'namers[0].services.a[7]: not an IPv4 address: "10.1"',
                'namers[0].services.a[8]: not a valid host name: "-bad-.example"',
                'namers[0].services.a[9]: weight must be a positive number, got "0"',
                'namers[0].services.a[10]: weight must be a positive number, got "-1"',
                'namers[0].services.a[11]: weight must be a positive number, got "heavy"',
                "namers[0].services.a[12]:"
                ' expected "host:port" or "host:port weight", got "10.0.0.1:80 1 2"',
                'namers[0].services.a[13]: expected "host:port" or "host:port weight", got 8080',
                'namers[0].services.b: expected a list, got "10.0.0.1:80"',
                "namers[0].services:"
                ' a service name may only hold letters, digits and _ . : -, got "c d"',
            ],
        )


class RulesTests(SynchronousTestCase, ErrorAssertions):
    """
    Router rules are checked with the dtab parser.
    """

    def installFakeDtab(self, error: Exception | None) -> list[str]:
        """
        Stand in for L{meshproxy.routing.dtab} with a parser that raises
        C{error}, and return the texts it is asked to read.
        """

        class DtabSyntaxError(ValueError):
            def __init__(self, message: str, line: int, column: int) -> None:
                super().__init__(message, line, column)
                self.message = message
                self.line = line
                self.column = column

            def __str__(self) -> str:
                return f"{self.message} at line {self.line}, column {self.column}"

        read: list[str] = []

        class Dtab:
            @staticmethod
            def read(text: str) -> Dtab:
                read.append(text)
                if "bad" in text:
                    raise DtabSyntaxError("expected a path", 2, 5)
                return Dtab()

        module = types.ModuleType("meshproxy.routing.dtab")
        module.Dtab = Dtab
        module.DtabSyntaxError = DtabSyntaxError
        name = "meshproxy.routing.dtab"
        saved = sys.modules.get(name)
        sys.modules[name] = module

        def restore() -> None:
            if saved is None:
                del sys.modules[name]
            else:
                sys.modules[name] = saved

        self.addCleanup(restore)
        return read

    def test_syntaxErrorWithLineAndColumn(self) -> None:
        """
        A dtab syntax error is reported with its line and column, once.
        """
        read = self.installFakeDtab(None)
        self.assertEqual(
            self.routerErrors("rules: |\n  /svc => /#/fs;\n  bad\n"),
            ["routers[0].rules: line 2, column 5: expected a path"],
        )
        self.assertEqual(read, ["/svc => /#/fs;\nbad\n"])

    def test_goodRulesKept(self) -> None:
        self.installFakeDtab(None)
        config = parseConfig(MINIMAL + "    rules: '/svc => /#/fs;'\n")
        self.assertEqual(config.routers[0].rules, "/svc => /#/fs;")

    def test_realDtabParser(self) -> None:
        """
        With the real dtab parser, a bad rule is reported at the position
        the parser gives.
        """
        from meshproxy.routing.dtab import Dtab, DtabSyntaxError

        text = "/svc => /#/fs;\n/svc =>> ;\n"
        with self.assertRaises(DtabSyntaxError) as caught:
            Dtab.read(text)
        e = caught.exception
        self.assertEqual(
            self.errorsOf(
                "routers: [{name: web, listen: 'tcp:1', rules: "
                + repr(text).replace("'", '"')
                + "}]"
            ),
            [f"routers[0].rules: line {e.line}, column {e.column}: {e.message}"],
        )
        Dtab.read("/svc => /#/fs;\n")
        parseConfig(MINIMAL + "    rules: '/svc => /#/fs;'\n")


class CollectedErrorsTests(SynchronousTestCase, ErrorAssertions):
    """
    Every problem is reported at once.
    """

    def test_allErrorsInOneConfigError(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parseConfig(
                yamlText(
                    """
                    admin: {listen: "tcp:nope"}
                    namers: [{kind: file}]
                    routers:
                      - name: web
                        listen: "tcp:4140"
                        timeouts: {total: fast}
                        loadBalancr: {}
                      - {name: api}
                    """
                ),
                source="mesh.yaml",
            )
        error = caught.exception
        expected = [
            'admin.listen: not a valid endpoint description: port "nope" is not a number',
            "namers[0].root: required",
            'routers[0].loadBalancr: unknown key (did you mean "loadBalancer"?)',
            'routers[0].timeouts.total: expected a duration like "2s", got "fast"',
            "routers[1].listen: required",
        ]
        self.assertEqual(error.errors, expected)
        self.assertEqual(str(error), "\n".join(expected))
        self.assertEqual(error.source, "mesh.yaml")


class YAMLTests(SynchronousTestCase, ErrorAssertions):
    """
    Problems with the text itself name the source, line and column.
    """

    def test_syntaxError(self) -> None:
        with self.assertRaises(ConfigError) as caught:
            parseConfig("routers:\n  - name: web\n   listen: x\n", source="mesh.yaml")
        [message] = caught.exception.errors
        self.assertEqual(
            message,
            "mesh.yaml: line 3, column 4: expected <block end>, but found"
            " '<block mapping start>' (while parsing a block collection at line 2, column 3)",
        )

    def test_duplicateKey(self) -> None:
        self.assertErrors(
            "routers: []\nadmin: {}\nrouters: []\n",
            '<config>: line 3, column 1: duplicate key "routers"'
            " (while constructing a mapping at line 1, column 1)",
        )

    def test_mergeKeysMayBeOverridden(self) -> None:
        """
        Keys brought in with C{<<} are not duplicates of keys written out.
        """
        config = parseConfig(
            yamlText(
                """
                routers:
                  - &web {name: web, listen: "tcp:1"}
                  - {<<: *web, name: api, listen: "tcp:2"}
                """
            )
        )
        self.assertEqual([r.name for r in config.routers], ["web", "api"])

    def test_unsafeTagsRejected(self) -> None:
        [message] = self.errorsOf("routers: !!python/object/apply:os.getcwd []")
        self.assertIn("line 1, column 10: could not determine a constructor", message)

    def test_empty(self) -> None:
        for text in ["", "\n", "# nothing yet\n", "---\n"]:
            self.assertErrors(
                text,
                '<config>: the config is empty (expected a mapping with a "routers" list)',
            )

    def test_notAMapping(self) -> None:
        self.assertErrors("- routers\n", "<config>: expected a mapping, got a list")
        self.assertErrors("routers\n", '<config>: expected a mapping, got "routers"')

    def test_nestedTooDeeply(self) -> None:
        """
        YAML nested past Python's recursion limit is a config error, not a
        crash.
        """
        self.assertErrors(
            "routers: " + "[" * 3000 + "]" * 3000 + "\n",
            "<config>: the YAML is nested too deeply",
        )

    def test_integerTooLongToRead(self) -> None:
        """
        An integer of more than Python's 4,300 digits, which PyYAML cannot
        convert, is a config error naming the limit.
        """
        [message] = self.errorsOf(MINIMAL + "    server: {maxHeaders: 1" + "0" * 5000 + "}\n")
        prefix = "<config>: a value the YAML cannot hold (Exceeds"
        self.assertTrue(message.startswith(prefix), message)
        self.assertNotIn("set_int_max_str_digits", message)

    def test_numbersPastAFloat(self) -> None:
        """
        An integer too large for a float where a number, a duration or a
        weight is expected is refused with the usual words, shown cut short.
        """
        huge = "1" + "0" * 400
        self.assertEqual(
            self.routerErrors(f"retries: {{budget: {{percent: {huge}}}}}"),
            ["routers[0].retries.budget.percent: expected a finite number, got "
             + huge[:57] + "..."],
        )
        self.assertEqual(
            self.routerErrors(f"timeouts: {{total: {huge}}}"),
            ['routers[0].timeouts.total: expected a duration like "2s", got ' + huge[:57] + "..."],
        )
        self.assertEqual(
            self.routerErrors(f"timeouts: {{total: {huge}s}}"),
            ['routers[0].timeouts.total: too long a duration, got "' + huge[:57] + '..."'],
        )
        self.assertErrors(
            f"namers:\n  - {{kind: static, services: {{a: ['127.0.0.1:1 {huge}']}}}}\n" + MINIMAL,
            'namers[0].services.a[0]: weight must be a positive number, got "'
            + huge[:57] + '..."',
        )

    def test_nonStringKeys(self) -> None:
        self.assertErrors(MINIMAL + "1: 2\n", "<config>: keys must be strings, got 1")
        self.assertEqual(
            self.routerErrors("server: {null: 1}"),
            ["routers[0].server: keys must be strings, got null"],
        )


class LoadConfigTests(SynchronousTestCase):
    """
    Tests for L{loadConfig}.
    """

    def write(self, content: bytes) -> str:
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(content)
        return path

    def test_loads(self) -> None:
        path = self.write(MINIMAL.encode())
        self.assertEqual(loadConfig(path), parseConfig(MINIMAL, source=path))
        self.assertEqual(loadConfig(path).source, path)

    def test_missingFile(self) -> None:
        path = self.mktemp()
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(
            caught.exception.errors, [f"{path}: cannot read the file: No such file or directory"]
        )
        self.assertEqual(caught.exception.source, path)

    def test_directory(self) -> None:
        path = self.mktemp()
        os.mkdir(path)
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(caught.exception.errors, [f"{path}: cannot read the file: Is a directory"])

    def test_emptyFile(self) -> None:
        path = self.write(b"")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(
            caught.exception.errors,
            [f'{path}: the config is empty (expected a mapping with a "routers" list)'],
        )

    def test_syntaxErrorNamesFile(self) -> None:
        path = self.write(b"routers: [\n")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        [message] = caught.exception.errors
        self.assertTrue(message.startswith(f"{path}: line 2, column 1: "), message)

    def test_notUTF8(self) -> None:
        path = self.write(b"routers: \xff\n")
        with self.assertRaises(ConfigError) as caught:
            loadConfig(path)
        self.assertEqual(
            caught.exception.errors, [f"{path}: not UTF-8 text (invalid start byte at byte 9)"]
        )


class RelativePathTests(SynchronousTestCase):
    """
    Relative paths in config keys are relative to the config file's
    directory; those inside endpoint strings are Twisted's and stay as
    written.
    """

    def configIn(self, directory: str, text: str) -> str:
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(yamlText(text))
        return path

    def test_relativeToTheConfigFile(self) -> None:
        """
        A file namer's C{root: endpoints} and C{admin.stateDir: state} in
        C{DIR/mesh.yaml} are C{DIR/endpoints} and C{DIR/state}, whatever
        the working directory.
        """
        directory = os.path.abspath(self.mktemp())
        path = self.configIn(
            directory,
            """
            admin: {stateDir: state}
            namers: [{kind: file, root: endpoints}, {kind: file, prefix: /#/up, root: ../up}]
            routers: [{name: web, listen: "unix:web.sock"}]
            """,
        )
        config = loadConfig(path)
        self.assertEqual(config.namers[0].root, os.path.join(directory, "endpoints"))
        self.assertEqual(config.namers[1].root, os.path.join(os.path.dirname(directory), "up"))
        self.assertEqual(config.admin.stateDir, os.path.join(directory, "state"))
        self.assertEqual(config.routers[0].listen, "unix:web.sock")
        # A relative path to the file itself makes no difference.
        relative = os.path.relpath(path)
        self.assertEqual(loadConfig(relative).namers[0].root, os.path.join(directory, "endpoints"))

    def test_absolutePathsKept(self) -> None:
        path = self.configIn(
            os.path.abspath(self.mktemp()), "namers: [{kind: file, root: /srv/e}]\n" + MINIMAL
        )
        self.assertEqual(loadConfig(path).namers[0].root, "/srv/e")

    def test_parseConfigBaseDirectory(self) -> None:
        """
        Text without a file is relative to the working directory, or to the
        directory given.
        """
        text = MINIMAL + "namers: [{kind: file, root: endpoints}]\n"
        self.assertEqual(parseConfig(text).namers[0].root, os.path.join(os.getcwd(), "endpoints"))
        self.assertEqual(
            parseConfig(text, baseDirectory="/etc/mesh").namers[0].root, "/etc/mesh/endpoints"
        )


class EveryErrorAtOnceTests(SynchronousTestCase, ErrorAssertions):
    """
    The checks across sections still run on the valid parts of a config
    that has other errors.
    """

    def test_crossSectionChecksSeeTheValidRouters(self) -> None:
        self.assertErrors(
            """
            namers: [{kind: static, services: {pg: ["127.0.0.1:5432"]}}]
            routers:
              - {name: web, listen: "tcp:1", timeouts: {total: fast}}
              - {name: api, listen: "tcp:1"}
              - {name: db, protocol: tcp, listen: "tcp:2", destination: /#/fs/pg}
            """,
            'routers[0].timeouts.total: expected a duration like "2s", got "fast"',
            'routers[2].destination: no namer owns "/#/fs/pg" (namer prefixes: "/#/static")',
        )

    def test_sectionChecksSeeTheValidKeys(self) -> None:
        """
        A check across two keys of a section runs when another key of the
        section is wrong.
        """
        self.assertEqual(
            self.routerErrors("timeouts: {total: 1s, perTry: 2s, connect: soon}"),
            [
                'routers[0].timeouts.connect: expected a duration like "2s", got "soon"',
                'routers[0].timeouts.perTry: must not be longer than total (1s), got "2s"',
            ],
        )


class PythonValuesTests(SynchronousTestCase):
    """
    The classes can be built in Python, where durations are seconds; each
    value is checked as in a file, and the classes stay frozen.
    """

    def test_secondsAndDefaults(self) -> None:
        timeouts = TimeoutsConfig(total=60, perTry=2.5)
        self.assertEqual((timeouts.total, timeouts.perTry, timeouts.connect), (60.0, 2.5, 2.0))
        self.assertIsInstance(timeouts.total, float)
        self.assertEqual(TimeoutsConfig(total="1m").total, 60.0)
        self.assertEqual(
            LatencyEjectionConfig(duration=1.0), LatencyEjectionConfig(**{"for": "1s"})
        )

    def test_badValuesNameTheAttribute(self) -> None:
        with self.assertRaises(ValidationError) as caught:
            ServerConfig(maxHeaders=0, headerTimeout=-1)
        self.assertEqual(
            [(p.loc, p.message) for p in problemsOf(caught.exception)],
            [
                (("maxHeaders",), "must be at least 1, got 0"),
                (("headerTimeout",), "expected a duration in seconds, got -1"),
            ],
        )
        self.assertRaises(ValidationError, AdminConfig, listen="tcp:x")
        self.assertRaises(ValidationError, AdminConfig, frobnicate=True)

    def test_pairsAndAddresses(self) -> None:
        """
        Static services and bound names are given as pairs, as stored.
        """
        namer = StaticNamerConfig(services=(("a", (("::1", 80, 2.0), ("b.example", 81, 1.0))),))
        self.assertEqual(dict(namer.services)["a"], (("::1", 80, 2.0), ("b.example", 81, 1.0)))
        router = RouterConfig(
            name="web", listen="tcp:1", boundNames=(("/#/fs/a", BoundNameConfig()),)
        )
        self.assertEqual(router.boundNames, (("/#/fs/a", BoundNameConfig()),))


class SectionTests(SynchronousTestCase):
    """
    The configuration classes as values (L{meshproxy.config.section.Section}):
    equal by class and attributes, hashable, frozen, copied without
    validation, shown with their attributes; their attributes described by
    C{model_fields}, their defaults validated once per class.
    """

    def test_equalByClassAndAttributes(self) -> None:
        """
        Sections of the same class with equal attributes are equal and hash
        alike; other attributes, or another class with the same attributes,
        make them differ.
        """
        from meshproxy.config.policies import ProxyProtocolSendConfig

        self.assertEqual(TimeoutsConfig(total=2.0), TimeoutsConfig(total="2s"))
        self.assertEqual(hash(TimeoutsConfig(total=2.0)), hash(TimeoutsConfig(total="2s")))
        self.assertNotEqual(TimeoutsConfig(total=2.0), TimeoutsConfig(total=3.0))
        self.assertNotEqual(TimeoutsConfig(), None)
        # The same attribute, the same value, another class.
        self.assertNotEqual(ProxyProtocolSendConfig(), BoundNameConfig())

        class Other(ProxyProtocolSendConfig):
            pass

        self.assertNotEqual(Other(), ProxyProtocolSendConfig())
        self.assertEqual({TimeoutsConfig(), TimeoutsConfig()}, {TimeoutsConfig()})

    def test_frozen(self) -> None:
        """
        Neither setting nor deleting an attribute is allowed, and the value
        is left as it was.
        """
        timeouts = TimeoutsConfig()
        self.assertRaises(ValidationError, setattr, timeouts, "total", 1.0)
        self.assertRaises(ValidationError, setattr, timeouts, "other", 1.0)
        self.assertRaises(ValidationError, delattr, timeouts, "total")
        self.assertEqual(timeouts.total, 10.0)
        self.assertFalse(hasattr(timeouts, "other"))

    def test_repr(self) -> None:
        """
        A section shows its class and its attributes in order.
        """
        self.assertEqual(
            repr(TimeoutsConfig(perTry=1)),
            "TimeoutsConfig(total=10.0, perTry=1.0, connect=2.0)",
        )

    def test_modelCopy(self) -> None:
        """
        C{model_copy} makes a section of the same class with some attributes
        replaced, as given (without validation); the original is unchanged.
        """
        timeouts = TimeoutsConfig()
        copied = timeouts.model_copy(update={"total": "unchecked"})
        self.assertIs(type(copied), TimeoutsConfig)
        self.assertEqual((copied.total, copied.connect), ("unchecked", 2.0))
        self.assertEqual(timeouts.total, 10.0)
        self.assertEqual(timeouts.model_copy(), timeouts)
        self.assertRaises(ValidationError, setattr, copied, "total", 1.0)

    def test_modelValidate(self) -> None:
        """
        C{model_validate} takes an instance as it is and validates a
        mapping; anything else is not a mapping.
        """
        timeouts = TimeoutsConfig()
        self.assertIs(TimeoutsConfig.model_validate(timeouts), timeouts)
        self.assertEqual(TimeoutsConfig.model_validate({"total": "1s"}).total, 1.0)
        with self.assertRaises(ValidationError) as caught:
            TimeoutsConfig.model_validate(["total"])
        self.assertEqual(
            problemsOf(caught.exception), [Problem((), "expected a mapping, got a list")]
        )

    def test_modelFields(self) -> None:
        """
        C{model_fields} describes the attributes in the order written: their
        key, their default as written, whether they are required; the
        defaults are not left on the class.
        """
        fields = LatencyEjectionConfig.model_fields
        self.assertEqual(list(fields), ["factor", "duration"])
        self.assertEqual((fields["duration"].alias, fields["duration"].default), ("for", "30s"))
        self.assertEqual((fields["factor"].alias, fields["factor"].default), (None, 5.0))
        self.assertFalse(fields["duration"].required)
        self.assertTrue(RouterConfig.model_fields["name"].required)
        # A section that is its defaults when absent.
        self.assertFalse(RouterConfig.model_fields["timeouts"].required)
        self.assertEqual(
            RouterConfig.model_fields["timeouts"].get_default(call_default_factory=True),
            TimeoutsConfig(),
        )
        self.assertNotIn("total", vars(TimeoutsConfig))
        self.assertEqual(list(FileNamerConfig.model_fields), ["kind", "prefix", "root", "interval"])

    def test_defaultsValidatedOncePerClass(self) -> None:
        """
        Defaults written as in YAML are validated, once per class: the
        sections built share them.
        """
        self.assertEqual(TimeoutsConfig().total, 10.0)
        first = RouterConfig(name="a", listen="tcp:1")
        second = RouterConfig(name="b", listen="tcp:2")
        self.assertEqual(first.timeouts, TimeoutsConfig())
        self.assertIs(first.timeouts, second.timeouts)
        self.assertEqual(first.retries.budget.ttl, 10.0)

    def test_aliases(self) -> None:
        """
        In Python an attribute with a key of another name is given by
        either; given by both, its name is an unknown key.
        """
        self.assertEqual(LatencyEjectionConfig(duration=2).duration, 2.0)
        self.assertEqual(LatencyEjectionConfig(**{"for": "2s"}).duration, 2.0)
        with self.assertRaises(ValidationError) as caught:
            LatencyEjectionConfig(**{"for": "2s", "duration": 3.0})
        self.assertEqual(
            problemsOf(caught.exception), [Problem(("duration",), "unknown key")]
        )

    def test_oneKindClass(self) -> None:
        """
        A class for one kind refuses another kind in its selector.
        """
        with self.assertRaises(ValidationError) as caught:
            FileNamerConfig(kind="static", root="/")
        self.assertEqual(
            problemsOf(caught.exception),
            [Problem(("kind",), 'expected one of "file", got "static"')],
        )

    def test_otherValueErrorsAreProblems(self) -> None:
        """
        A L{ValueError} a check did not foresee, from a value built in
        Python, is a problem at the value's path, not a crash.
        """
        with self.assertRaises(ValidationError) as caught:
            StaticNamerConfig(services=[("a",)])
        self.assertEqual(
            problemsOf(caught.exception),
            [
                Problem(
                    ("services",), "Value error, not enough values to unpack (expected 2, got 1)"
                )
            ],
        )

    def test_pickled(self) -> None:
        """
        A configuration survives pickling (as the workers receive theirs).
        """
        import pickle

        config = parseConfig(MINIMAL)
        self.assertEqual(pickle.loads(pickle.dumps(config)), config)

    def test_subclassesKeepTheirBasesAttributes(self) -> None:
        """
        A subclass has its bases' attributes, then its own; an annotation
        that is no value type is refused when the class is made.
        """
        from meshproxy.config.fields import Integer
        from meshproxy.config.section import Section

        # (Annotations are text in this module: the classes are made as a
        # class statement would make them in a config module.)
        Base = type("Base", (Section,), {"__annotations__": {"a": Integer()}, "a": 1})
        Derived = type("Derived", (Base,), {"__annotations__": {"b": Integer(0)}, "b": 2})
        self.assertEqual(list(Derived.model_fields), ["a", "b"])
        self.assertEqual((Derived(b=3).a, Derived(b=3).b), (1, 3))
        self.assertRaises(TypeError, type, "Bad", (Section,), {"__annotations__": {"a": int}})
        self.assertRaises(
            TypeError, type, "Text", (Section,), {"__annotations__": {"a": "Integer()"}}
        )

    def test_problemsShown(self) -> None:
        """
        A L{ValidationError} shows its problems with their paths.
        """
        with self.assertRaises(ValidationError) as caught:
            ServerConfig(maxHeaders=0, headerTimeout=-1)
        self.assertEqual(
            str(caught.exception),
            "2 problems in ServerConfig\n"
            "  maxHeaders: must be at least 1, got 0\n"
            "  headerTimeout: expected a duration in seconds, got -1",
        )


class JSONSchemaTests(SynchronousTestCase):
    """
    The JSON Schema (C{meshproxy schema}) accepts the sample configs and
    refuses what the loader refuses, as far as a schema can say it.
    """

    def setUp(self) -> None:
        try:
            import jsonschema
        except ImportError as e:
            raise SkipTest("jsonschema is a test dependency (tox.ini)") from e
        import yaml

        from meshproxy.config import jsonSchema

        self.schema = jsonSchema()
        # Draft-07, which YAML editors support.
        self.assertEqual(self.schema["$schema"], "http://json-schema.org/draft-07/schema#")
        jsonschema.Draft7Validator.check_schema(self.schema)
        self.validator = jsonschema.Draft7Validator(self.schema)
        self.load = yaml.safe_load

    def valid(self, text: str) -> bool:
        return self.validator.is_valid(self.load(yamlText(text)))

    def test_sampleAndDemoConfigs(self) -> None:
        from meshproxy.demo import demoConfigText

        sample = os.path.join(os.path.dirname(os.path.dirname(__file__)), "etc", "meshproxy.yaml")
        with open(sample) as f:
            self.validator.validate(self.load(f.read()))
        self.validator.validate(self.load(demoConfigText()))

    def test_knownBadDocument(self) -> None:
        """
        A document with a bad duration, an unknown key and a key of another
        kind fails, and the schema says where.
        """
        document = self.load(
            yamlText(
                """
                routers:
                  - name: web
                    listen: "tcp:4140"
                    timeouts: {total: fast}
                    loadBalancer: {kind: roundRobin, decay: 1s}
                    frobnicate: 1
                """
            )
        )
        self.assertFalse(self.validator.is_valid(document))

    def test_durationsAreStringsWithAPattern(self) -> None:
        total = self.schema["definitions"]["TimeoutsConfig"]["properties"]["total"]
        self.assertEqual(
            (total["type"], total["pattern"], total["default"]),
            ("string", checks.DURATION_PATTERN, "10s"),
        )
        self.assertTrue(self.valid(MINIMAL + "    timeouts: {total: 250ms, perTry: 1.5s}\n"))
        for bad in ["fast", "10", "-1s", "1d"]:
            self.assertFalse(self.valid(MINIMAL + f"    timeouts: {{total: '{bad}'}}\n"), bad)

    def test_unknownKeysForbidden(self) -> None:
        for name, definition in self.schema["definitions"].items():
            self.assertIs(definition["additionalProperties"], False, name)
        self.assertIs(self.schema["additionalProperties"], False)
        self.assertNotIn("source", self.schema["properties"])
        self.assertFalse(self.valid(MINIMAL + "namer: []\n"))
        self.assertFalse(self.valid(MINIMAL + "    timeots: {}\n"))

    def test_agreesWithTheLoader(self) -> None:
        """
        Documents the loader accepts or refuses for their keys, their
        kinds or their types, the schema judges alike.
        """
        for text in [
            MINIMAL,
            MINIMAL + "    timeouts:\n    boundNames:\nadmin:\nnamers:\n",
            MINIMAL + "    failureAccrual: {kind: none}\n",
            MINIMAL + "    identifier: {kind: header, name: x-svc}\n",
            MINIMAL + "    failureAccrual: {latency: {factor: 2, for: 1s}}\n",
            MINIMAL + "namers: [{kind: static, services: {a: ['127.0.0.1:1'], b: }}]\n",
            "routers: [{name: db, protocol: tcp, listen: 'tcp:1', destination: /$/inet/h/1,"
            " timeouts: {connect: 1s}}]",
            "routers: [{name: db, protocol: tcp, listen: 'tcp:1', identifier: {kind: sni},"
            " rules: '/svc => /$/inet/h/1;', retries: {backoffMax: 1s}}]",
        ]:
            parseConfig(yamlText(text))
            self.assertTrue(self.valid(text), text)
        for text in [
            "admin: {}",
            "routers: []",
            "routers: [{name: web}]",
            "routers: [{name: 'a b', listen: 'tcp:1'}]",
            MINIMAL + "    loadBalancer: {kind: roundRobin, decay: 1s}\n",
            MINIMAL + "    identifier: {kind: header}\n",
            MINIMAL + "    identifier: {kind: host, segments: 2}\n",
            MINIMAL + "    failureAccrual: {latency: {factor: 2, duration: 1s}}\n",
            MINIMAL + "    server: {maxHeaders: 0}\n",
            MINIMAL + "    forwarded: 'yes'\n",
            MINIMAL + "    classifier: {kind: retryableread5xx}\n",
            MINIMAL + "namers: [{root: /x}]\n",
            MINIMAL + "namers: [{kind: static, root: /x}]\n",
            "routers: [{name: db, protocol: tcp, listen: 'tcp:1'}]",
            "routers: [{name: db, protocol: tcp, listen: 'tcp:1', destination: /$/inet/h/1,"
            " timeouts: {total: 1s}}]",
            "routers: [{name: db, protocol: tcp, listen: 'tcp:1', destination: /$/inet/h/1,"
            " retries: {maxRetries: 1}}]",
            "routers: [{name: db, protocol: tcp, listen: 'tcp:1', destination: /$/inet/h/1,"
            " identifier: {kind: sni}}]",
            "routers: [{name: db, protocol: tcp, listen: 'tcp:1', identifier: {kind: host}}]",
            MINIMAL + "    identifier: {kind: sni}\n",
            MINIMAL + "source: x\n",
        ]:
            self.assertRaises(ConfigError, parseConfig, yamlText(text))
            self.assertFalse(self.valid(text), text)
