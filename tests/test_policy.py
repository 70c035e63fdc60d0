"""
Tests for L{meshproxy.policy}.
"""

from twisted.trial.unittest import SynchronousTestCase

from meshproxy.policy import Policy, PolicyError, Rule

USERS = ("svc", "users")
USERS_BOUND = ("#", "fs", "users")
ORDERS = ("svc", "orders")
WEB = "spiffe://mesh.local/web"


class PolicyTests(SynchronousTestCase):
    def test_defaultAllowWithAnAllowRuleClosesItsName(self):
        """
        The contract's example: with default allow, a rule naming
        /svc/users lets only its callers and methods in there; other names
        stay open.
        """
        policy = Policy(
            [Rule(callers=(WEB,), names=("/svc/users",), methods=("GET", "HEAD"))], "allow"
        )
        self.assertTrue(policy.decide(WEB, "10.0.0.1", [USERS, USERS_BOUND], "GET").allowed)
        decision = policy.decide(WEB, "10.0.0.1", [USERS, USERS_BOUND], "DELETE")
        self.assertFalse(decision.allowed)
        self.assertIsNone(decision.rule)
        self.assertFalse(policy.decide("spiffe://mesh.local/x", None, [USERS], "GET").allowed)
        self.assertFalse(policy.decide(None, "10.0.0.1", [USERS], "GET").allowed)
        self.assertTrue(policy.decide(None, "10.0.0.1", [ORDERS], "POST").allowed)

    def test_firstMatchDecides(self):
        policy = Policy(
            [
                Rule(callers=("spiffe://mesh.local/bad",), action="deny"),
                Rule(callers=("spiffe://mesh.local/*",)),
            ],
            "deny",
        )
        d = policy.decide("spiffe://mesh.local/bad", None, [USERS], "GET")
        self.assertEqual((d.allowed, d.rule), (False, 0))
        d = policy.decide("spiffe://mesh.local/good", None, [USERS], "GET")
        self.assertEqual((d.allowed, d.rule), (True, 1))
        d = policy.decide("spiffe://other/good", None, [USERS], "GET")
        self.assertEqual((d.allowed, d.rule, d.reason), (False, None, "default deny"))

    def test_callerKinds(self):
        policy = Policy([Rule(callers=("authenticated",), names=("/svc/users",))], "deny")
        self.assertTrue(policy.decide("anything", None, [USERS], "GET").allowed)
        self.assertFalse(policy.decide(None, "127.0.0.1", [USERS], "GET").allowed)
        policy = Policy([Rule(callers=("unauthenticated",), action="deny")], "allow")
        self.assertFalse(policy.decide(None, "127.0.0.1", [USERS], "GET").allowed)
        self.assertTrue(policy.decide(WEB, "127.0.0.1", [USERS], "GET").allowed)
        policy = Policy([Rule(callers=("10.0.0.0/8", "::1"))], "deny")
        self.assertTrue(policy.decide(None, "10.2.3.4", [USERS], "GET").allowed)
        self.assertTrue(policy.decide(None, "::1", [USERS], "GET").allowed)
        self.assertFalse(policy.decide(None, "11.0.0.1", [USERS], "GET").allowed)
        self.assertFalse(policy.decide(None, None, [USERS], "GET").allowed)
        self.assertFalse(policy.decide(None, "not an address", [USERS], "GET").allowed)

    def test_namesAreSegmentPrefixes(self):
        policy = Policy([Rule(names=("/svc/user",), action="deny")], "allow")
        self.assertTrue(policy.decide(None, None, [USERS], "GET").allowed)
        policy = Policy([Rule(names=("/#/fs",), action="deny")], "allow")
        self.assertFalse(policy.decide(None, None, [USERS, USERS_BOUND], "GET").allowed)

    def test_badPolicies(self):
        self.assertRaises(PolicyError, Policy, [], "maybe")
        e = self.assertRaises(PolicyError, Policy, [Rule(), Rule(action="block")])
        self.assertIn("rules[1].action", str(e))
        e = self.assertRaises(PolicyError, Policy, [Rule(names=("svc",))])
        self.assertIn("rules[0]", str(e))
        self.assertRaises(PolicyError, Policy, [Rule(callers=("",))])

    def test_describeRoundTrips(self):
        policy = Policy([Rule(callers=(WEB,), names=("/svc/users",), methods=("GET",))], "deny")
        self.assertEqual(
            policy.describe(),
            {
                "default": "deny",
                "rules": [
                    {"callers": [WEB], "names": ["/svc/users"], "methods": ["GET"], "action": "allow"}
                ],
            },
        )
