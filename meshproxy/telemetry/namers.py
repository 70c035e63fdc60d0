"""
Prometheus metrics of the namers: whether each has loaded, how many names
it follows, whether some are served from stale data, and its errors.

Read at scrape time from each namer's C{loaded} attribute and, for the
namers that have one (the etcd and DNS namers), its C{state()} dict, the
same one C{GET /admin/state} shows under C{"namers"}. Nothing is counted on
the data path.

Exported families (C{namer} is the namer's prefix, such as C{/#/etcd};
C{kind} is its config kind)::

    meshproxy_namer_loaded{namer,kind}        gauge, 1 once the first load is done
    meshproxy_namer_names{namer}              gauge: names followed (DNS), services
                                              known (etcd)
    meshproxy_namer_stale{namer}              gauge, 1 while some endpoints come from
                                              data the source no longer confirms
                                              (etcd not followed; a DNS name failing)
    meshproxy_namer_errors_total{namer}       failed lookups (DNS), failed requests
                                              and watches (etcd)
    meshproxy_namer_resyncs_total{namer}      etcd: full reloads after a compacted
                                              revision or a lost watch
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from prometheus_client.metrics_core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

__all__ = ["NamerCollector"]

#: A namer's class name → its config kind, for the namers without a state.
_KINDS = {"FileNamer": "file", "StaticNamer": "static", "DnsNamer": "dns", "EtcdNamer": "etcd"}


def _families() -> tuple[
    GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily,
    CounterMetricFamily, CounterMetricFamily,
]:
    return (
        GaugeMetricFamily(
            "meshproxy_namer_loaded",
            "Whether the namer has finished its first load (1) or not (0).",
            labels=["namer", "kind"],
        ),
        GaugeMetricFamily(
            "meshproxy_namer_names",
            "Names the namer follows (DNS) or services it knows (etcd).",
            labels=["namer"],
        ),
        GaugeMetricFamily(
            "meshproxy_namer_stale",
            "Whether some endpoints come from data the source no longer confirms.",
            labels=["namer"],
        ),
        CounterMetricFamily(
            "meshproxy_namer_errors",
            "Failed lookups (DNS), failed requests and watches (etcd).",
            labels=["namer"],
        ),
        CounterMetricFamily(
            "meshproxy_namer_resyncs",
            "Full reloads of an etcd namer (a compacted revision, a lost watch).",
            labels=["namer"],
        ),
    )


class NamerCollector(Collector):
    """
    The collector of the namers' families.

    @param namers: called at each scrape; returns the namers (a reload may
        change them).
    """

    def __init__(self, namers: Callable[[], Iterable[Any]]) -> None:
        self._namers = namers

    def describe(self) -> Iterator[Metric]:
        """
        The families, without samples (so the registry checks their names
        once, at registration).
        """
        return iter(_families())

    def collect(self) -> Iterator[Metric]:
        """
        The families, from the namers as they are now.
        """
        loaded, names, stale, errors, resyncs = _families()
        for namer in self._namers():
            prefix = str(namer.prefix)
            state = namer.state() if callable(getattr(namer, "state", None)) else {}
            kind = state.get("kind") or _KINDS.get(type(namer).__name__, "other")
            loaded.add_metric([prefix, kind], 1.0 if namer.loaded else 0.0)
            count = state.get("names", state.get("services"))
            if count is not None:
                names.add_metric([prefix], float(count))
            if "stale" in state:
                stale.add_metric([prefix], 1.0 if state["stale"] else 0.0)
            failed = state.get("failures", state.get("errors"))
            if failed is not None:
                errors.add_metric([prefix], float(failed))
            if "resyncs" in state:
                resyncs.add_metric([prefix], float(state["resyncs"]))
        return iter((loaded, names, stale, errors, resyncs))
