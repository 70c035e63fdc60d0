"""
Tests for L{meshproxy.telemetry.namers}: the namers' families, read from
their C{loaded} and C{state()} at scrape time, and exported by a running
process's C{/metrics}.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from twisted.trial.unittest import SynchronousTestCase

from meshproxy.routing.path import Path
from meshproxy.telemetry.namers import NamerCollector


class _Namer:
    def __init__(self, prefix, loaded, state=None):
        self.prefix = Path.read(prefix)
        self.loaded = loaded
        if state is not None:
            self.state = lambda: dict(state)


class StaticNamer(_Namer):
    """
    Named like the static namer: its kind comes from its class.
    """


def _samples(registry):
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in registry.collect()
        for sample in family.samples
    }


class NamerCollectorTests(SynchronousTestCase):
    def setUp(self):
        self.namers = []
        self.registry = CollectorRegistry()
        self.registry.register(NamerCollector(lambda: self.namers))

    def test_fromState(self):
        """
        A namer with a state gives every family it has a value for: the
        etcd namer's services, staleness, errors and resyncs; the DNS
        namer's names, staleness and failures.
        """
        self.namers += [
            _Namer("/#/etcd", True, {"kind": "etcd", "services": 3, "stale": True,
                                     "errors": 4, "resyncs": 2}),
            _Namer("/#/dns", False, {"kind": "dns", "names": 5, "stale": False,
                                     "failures": 7, "answers": 9}),
        ]
        samples = _samples(self.registry)
        self.assertEqual(samples, {
            ("meshproxy_namer_loaded", (("kind", "etcd"), ("namer", "/#/etcd"))): 1.0,
            ("meshproxy_namer_loaded", (("kind", "dns"), ("namer", "/#/dns"))): 0.0,
            ("meshproxy_namer_names", (("namer", "/#/etcd"),)): 3.0,
            ("meshproxy_namer_names", (("namer", "/#/dns"),)): 5.0,
            ("meshproxy_namer_stale", (("namer", "/#/etcd"),)): 1.0,
            ("meshproxy_namer_stale", (("namer", "/#/dns"),)): 0.0,
            ("meshproxy_namer_errors_total", (("namer", "/#/etcd"),)): 4.0,
            ("meshproxy_namer_errors_total", (("namer", "/#/dns"),)): 7.0,
            ("meshproxy_namer_resyncs_total", (("namer", "/#/etcd"),)): 2.0,
        })

    def test_withoutState(self):
        """
        A namer without a state (file, static) has its loaded gauge only,
        its kind named from its class.
        """
        self.namers.append(StaticNamer("/#/static", True))
        self.assertEqual(_samples(self.registry), {
            ("meshproxy_namer_loaded", (("kind", "static"), ("namer", "/#/static"))): 1.0,
        })

    def test_readAtEachScrape(self):
        """
        The namers are asked for at each scrape: a reload's new ones are
        seen, the removed ones go.
        """
        self.namers.append(StaticNamer("/#/a", True))
        self.assertIn(b'namer="/#/a"', generate_latest(self.registry))
        self.namers[:] = [StaticNamer("/#/b", False)]
        text = generate_latest(self.registry)
        self.assertNotIn(b'namer="/#/a"', text)
        self.assertIn(b'meshproxy_namer_loaded{kind="static",namer="/#/b"} 0.0', text)
