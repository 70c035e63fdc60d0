"""
Tests for the security sections of the config: tls, upstreamTls, policy,
and the clientIdentity identifier.
"""

import json
import os
import textwrap

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.config import ConfigError, loadConfig, parseConfig

BASE = """
routers:
  - name: web
    listen: "tcp:4143:interface=127.0.0.1"
"""


def routerWith(text):
    return BASE + textwrap.indent(textwrap.dedent(text), "    ")


class SecurityConfigTests(SynchronousTestCase):
    def errors(self, text):
        e = self.assertRaises(ConfigError, parseConfig, text)
        return e.errors

    def test_defaults(self):
        router = parseConfig(BASE).routers[0]
        self.assertIsNone(router.tls)
        self.assertIsNone(router.upstreamTls)
        self.assertEqual((router.policy.default, router.policy.rules), ("allow", ()))

    def test_pathsRelativeToTheConfigFile(self):
        directory = self.mktemp()
        os.makedirs(directory)
        path = os.path.join(directory, "mesh.yaml")
        with open(path, "w") as f:
            f.write(
                routerWith(
                    """
                    tls:
                      certificates:
                        - {cert: tls/web.pem, key: tls/web.key}
                        - cert: tls/api.pem
                          key: tls/api.key
                          sni: [API.example., "*.api.example"]
                      clientCertificates: {ca: tls/ca.pem, verify: optional}
                      minVersion: TLSv1.3
                    upstreamTls: {ca: tls/ca.pem, serverName: "{service}.mesh.local"}
                    """
                )
            )
        router = loadConfig(path).routers[0]
        base = os.path.abspath(directory)
        web, api = router.tls.certificates
        self.assertEqual(web.cert, os.path.join(base, "tls", "web.pem"))
        self.assertEqual(api.sni, ("api.example", "*.api.example"))
        self.assertEqual(router.tls.clientCertificates.verify, "optional")
        self.assertEqual(router.tls.minVersion, "TLSv1.3")
        self.assertEqual(router.upstreamTls.ca, os.path.join(base, "tls", "ca.pem"))
        self.assertEqual(router.upstreamTls.serverName, "{service}.mesh.local")

    def test_tlsErrors(self):
        self.assertEqual(
            self.errors(
                routerWith(
                    """
                    tls:
                      certificates:
                        [{cert: a.pem}, {cert: b.pem, key: b.key, sni: ["a b", "*.*.x"]}]
                      clientCertificates: {verify: sometimes}
                      minVersion: TLSv1.1
                    """
                )
            ),
            [
                "routers[0].tls.certificates[0].key: required",
                'routers[0].tls.certificates[1].sni[0]: expected a DNS name such as "api.example"'
                ' or "*.api.example", got "a b"',
                'routers[0].tls.certificates[1].sni[1]: expected a DNS name such as "api.example"'
                ' or "*.api.example", got "*.*.x"',
                "routers[0].tls.clientCertificates.ca: required",
                'routers[0].tls.clientCertificates.verify: expected one of "required", "optional",'
                ' got "sometimes"',
                'routers[0].tls.minVersion: "TLSv1.1" is too old (broken): TLSv1.2 or TLSv1.3',
            ],
        )

    def test_tlsWithAnSSLListenString(self):
        text = (
            BASE.replace('"tcp:4143', '"tls:4143:privateKey=x')
            + "    tls: {certificates: [{cert: a, key: b}]}\n"
        )
        errors = self.errors(text)
        self.assertIn(
            "routers[0].tls: cannot be used with an ssl: or tls: listen string (give one or the"
            " other: tls with a tcp: listener)",
            errors,
        )

    def test_upstreamTlsErrors(self):
        self.assertEqual(
            self.errors(routerWith("upstreamTls: {ca: ca.pem, key: k.pem, serverName: 'a b'}\n")),
            [
                'routers[0].upstreamTls.serverName: expected a DNS name or a URI (such as'
                ' "{service}.mesh.local" or "spiffe://mesh.local/{service}"), got "a b"',
                "routers[0].upstreamTls.cert: required with key",
            ],
        )
        self.assertEqual(
            self.errors(routerWith("upstreamTls: {ca: ca.pem, serverName: '{host}.x'}\n")),
            [
                "routers[0].upstreamTls.serverName:"
                ' only {service} may stand in braces, got "{host}.x"'
            ],
        )

    def test_upstreamTlsPerBoundName(self):
        text = BASE.replace(
            "routers:",
            "namers:\n"
            "  - {kind: static, prefix: /#/s, services: {users: ['127.0.0.1:1']}}\n"
            "routers:",
        ) + routerWith(
            "boundNames:\n  /#/s/users: {upstreamTls: {ca: ca.pem, serverName: 'spiffe://m/{service}'}}\n"
        ).split("\n", 4)[4]
        router = parseConfig(text).routers[0]
        [(name, settings)] = router.boundNames
        self.assertEqual(settings.upstreamTls.serverName, "spiffe://m/{service}")

    def test_policy(self):
        policy = parseConfig(
            routerWith(
                """
                policy:
                  default: deny
                  rules:
                    - callers: ["spiffe://mesh.local/web", 10.0.0.0/8]
                      names: [/svc/users]
                      methods: [get]
                    - {callers: [unauthenticated], action: deny}
                """
            )
        ).routers[0].policy
        self.assertEqual(policy.default, "deny")
        first, second = policy.rules
        self.assertEqual(first.methods, ("GET",))
        self.assertEqual(first.action, "allow")
        self.assertEqual(second.action, "deny")

    def test_policyErrors(self):
        self.assertEqual(
            self.errors(
                routerWith(
                    "policy: {default: maybe, rules: [{callers: [''], names: [svc],"
                    " methods: ['G ET'], action: block, who: x}]}\n"
                )
            ),
            [
                'routers[0].policy.default: expected one of "allow", "deny", got "maybe"',
                "routers[0].policy.rules[0].who: unknown key",
                "routers[0].policy.rules[0].callers[0]: must not be empty",
                'routers[0].policy.rules[0].names[0]: expected a path starting with "/", got "svc"',
                "routers[0].policy.rules[0].methods[0]:"
                ' expected an HTTP method such as GET, got "G ET"',
                'routers[0].policy.rules[0].action: expected one of "allow", "deny", got "block"',
            ],
        )

    def test_policyNamesLogicalOrBound(self):
        """
        A rule names logical names or bound ones (or prefixes of them, down
        to the namers' C{/#}), as the policy matches both.
        """
        names = ["/svc/users", "/", "/#", "/#/fs", "/#/fs/users", "/$/inet/127.0.0.1/8080"]
        policy = parseConfig(
            routerWith("policy: {rules: [{names: %s}]}\n" % (json.dumps(names),))
        ).routers[0].policy
        self.assertEqual(policy.rules[0].names, tuple(names))
        self.assertEqual(
            self.errors(routerWith("policy: {rules: [{names: ['/#/f s', '/#/', '/$//x']}]}\n")),
            [
                "routers[0].policy.rules[0].names[%d]: expected a logical name such as"
                ' "/svc/users" or a bound one such as "/#/fs/users", got %s' % (i, json.dumps(n))
                for i, n in enumerate(["/#/f s", "/#/", "/$//x"])
            ],
        )

    def test_clientIdentityIdentifier(self):
        router = parseConfig(routerWith("identifier: {kind: clientIdentity}\n")).routers[0]
        self.assertEqual(router.identifier.kind, "clientIdentity")
        self.assertEqual(
            self.errors(routerWith("identifier: {kind: clientIdentity, prefix: /svc}\n")),
            [
                'routers[0].identifier.prefix: only for kind "host" or kind "path" or kind "header"'
                ' or kind "sni"'
            ],
        )
