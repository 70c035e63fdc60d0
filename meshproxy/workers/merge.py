"""
The supervisor's one view over its workers: C{/metrics}, C{/admin/state}
and the tap, merged from what each worker reports (see
L{meshproxy.workers.collect}).

L{Aggregator} is the L{IWorkerAggregator}: the supervisor tells it when a
worker's channel comes up (L{Aggregator.workerStarted}) and goes away
(L{Aggregator.workerStopped}); the admin API asks it for
L{Aggregator.exposition} (the body of C{/metrics}), L{Aggregator.state}
(the routers of C{/admin/state}) and serves C{/admin/tap} from
L{Aggregator.tap}, a L{TapHub} fed by the workers' taps (give it to
C{AdminAPI(tap=...)} as is).

Metrics
=======

A scrape asks every live worker (L{CollectMetrics}) when it begins, so it
counts every request answered before it began. A worker that has not
answered within C{timeout} seconds (2 by default) does not hold the scrape:
its counters and histograms count with the values of its last answer (so
no counter goes back), its gauges and per-worker series are left out, and
C{meshproxy_worker_scrape_up{worker}} is 0 for it (1 for those that
answered).

Each family is merged by the rule L{ruleFor} gives it (the table is
L{MERGE_RULES}; docs/observability.md shows it):

 - L{SUM}: one series per label set, the sum over the supervisor and the
   workers. The default of counters and histograms, and of the gauges
   whose sum means something (connections open, requests pending).
 - L{WORKER}: each process's series apart, with a C{worker} label (the
   worker's slot, C{"0"}...; C{"supervisor"} for the supervisor's own).
   The default of the other gauges (EWMA, up, certificate expiry, build
   info) and of every C{process_*} and C{python_*} family, counters
   included (a restarted process's CPU starts from zero again, and its
   C{process_start_time_seconds} says so).
 - L{SUPERVISOR}: the supervisor's own series only
   (C{meshproxy_tap_events_total}: the events reach the subscribers there;
   the workers' count them once more on the way).

No double counting, no counter going back after a restart: when a worker
generation stops, the last values it answered of its summed counters and
histograms go into a retired total, which every later scrape adds; the
next generation in the slot starts from zero. (An answer that comes after
the generation stopped adds only what it counted since its previous one.)
What a worker counted after its last answer and before it died is lost,
as in one process that dies. A retired series with an C{endpoint} label
is forgotten at the first scrape that every live worker answered without
it (the endpoint left its set: in one process its series go too); other
retired series are kept for the supervisor's life.

The supervisor's own registry (its process, its build, its namers and
stores) is merged in as one more process. C{_created} samples are
dropped. OpenMetrics exemplars are kept: per bucket, the latest one of any
process.

State
=====

L{Aggregator.state} asks every live worker (L{CollectState}) and merges per
router, bound name and endpoint: counts (requests, successes, failures,
pending, connections, limits) are summed and the success rate taken from
the sums; C{ewmaMs} is the request-weighted mean over the workers (the
plain mean when none sent requests yet) and C{ewmaMsMax} the highest;
C{consecutiveFailures}, C{backoffStep} and C{ejectedUntil} are the highest;
C{state} is the worst of the workers' (L{STATE_ORDER}: ejected, probing,
draining, live) and C{stateDetail} says on how many workers each state is
(C{"ejected on 1/2, live on 1/2"}); C{panicking} is true if any worker
panics. Everything else (listen, rules, resolution, ...) is the first
answering worker's. Workers that did not answer in time are listed under
C{missing} (C{[{"worker": 1, "error": "..."}]}); with C{perWorker}, each
answering worker's own view is under C{byWorker} (by slot, as text).

Stats, explain, the rules dry run
=================================

L{Aggregator.stats} asks every live worker (L{CollectStats}) for the
counters of C{GET /admin/stats} and sums them per router and bound name
(requests, responses per class, the duration buckets and sum, connections
opened and closed). As for the metrics, a stopped generation's last answer
goes into a retired total that every later answer adds, so that no counter
goes back when a worker restarts (the dashboard's rates are deltas), and a
worker that did not answer in time counts with its last answer. What a
worker counted after its last answer is lost when it stops (an answer that
comes after it stopped counts only if it is its first).

L{Aggregator.explain} completes an explain the supervisor computed (the
rules, the delegation, the policy: they do not depend on traffic): each
bound name it reaches gets the endpoints of the workers that bound it
(L{CollectExplain}), merged as the state's are, each endpoint's C{score}
being the request-weighted mean of the workers' and C{scoreMax} the
highest. A bound name no worker bound keeps the supervisor's entry.

L{Aggregator.recentNames} is the union of the logical names the workers'
router routed recently (L{CollectRecentNames}), most recent first in each
worker, the workers taken in turn: the names the rules dry run checks.

Each of them has C{missing}: the workers that did not answer in time.

Tap
===

L{Aggregator.tap} is a L{TapHub} whose subscribers (the admin API's
C{/admin/tap} streams) are mirrored on every worker: one worker
subscription per distinct filter (L{TapSubscribe}), whose events the
aggregator pulls (L{TapEvents}, one poll in flight per worker and filter)
and hands to each of its subscribers with that filter. A slow subscriber
is bounded and its drops counted by the hub as in one process; a worker
that cannot hand events over as fast as they come pauses, then drops and
counts (see L{meshproxy.workers.collect}).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, cast

import attrs
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.samples import Exemplar
from twisted.internet.defer import Deferred, gatherResults, succeed
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from meshproxy.telemetry.metrics import exposition as render
from meshproxy.telemetry.spans import TelemetryStats
from meshproxy.telemetry.tap import Subscription, TapFilter, TapHub
from meshproxy.workers.collect import (
    CollectExplain,
    CollectMetrics,
    CollectRecentNames,
    CollectState,
    CollectStats,
    TapEvents,
    TapSubscribe,
    TapUnsubscribe,
    dumpFilter,
    familiesOf,
    loadFamilies,
)
from meshproxy.workers.interfaces import CallRemote, IWorkerAggregator

__all__ = [
    "MERGE_RULES",
    "STATE_ORDER",
    "SUM",
    "SUPERVISOR",
    "TIMEOUT",
    "WORKER",
    "Aggregator",
    "WorkerTapHub",
    "mergeStates",
    "mergeStats",
    "ruleFor",
]

_log = Logger()

SUM = "sum"
"""Merge rule: one series per label set, summed over the processes."""

WORKER = "worker"
"""Merge rule: each process's series apart, with a C{worker} label."""

SUPERVISOR = "supervisor"
"""Merge rule: the supervisor's own series only."""

#: The merge rule of each family (by its name without C{_total}) whose rule
#: is not its type's default (L{ruleFor}).
MERGE_RULES: dict[str, str] = {
    # Gauges whose sum over the workers is the process group's.
    "meshproxy_server_connections_open": SUM,
    "meshproxy_endpoint_pending": SUM,
    "meshproxy_upstream_connections_open": SUM,
    "meshproxy_upstream_connections_idle": SUM,
    "meshproxy_tcp_connections_active": SUM,
    # Gauges that are one process's view: a sum would mean nothing.
    "meshproxy_endpoint_ewma_seconds": WORKER,
    "meshproxy_endpoint_up": WORKER,
    "meshproxy_tls_certificate_expiry_timestamp_seconds": WORKER,
    "meshproxy_build": WORKER,
    "meshproxy_worker_scrape_up": SUPERVISOR,
    # Counted by the workers as they hand events over, then by the
    # supervisor as its subscribers get them: the latter is the tap's.
    "meshproxy_tap_events": SUPERVISOR,
}

#: Family name prefixes whose families are per process, whatever their type.
_PER_PROCESS_PREFIXES = ("process_", "python_")

#: The types whose series only grow within one process: those of a stopped
#: generation are kept in the retired total.
_MONOTONIC = frozenset(("counter", "histogram"))

TIMEOUT = 2.0
"""Seconds a scrape or a state read waits for a worker."""

#: Endpoint states, worst first.
STATE_ORDER: tuple[str, ...] = ("ejected", "probing", "draining", "live")

_SUPERVISOR_LABEL = "supervisor"


def ruleFor(name: str, typ: str) -> str:
    """
    How a family is merged over the processes.

    @param name: the family's name (C{Metric.name}: without C{_total}).
    @param typ: its type (C{counter}, C{gauge}, C{histogram}, C{info}...).
    @return: L{SUM}, L{WORKER} or L{SUPERVISOR}: L{MERGE_RULES} if it names
        the family; else L{WORKER} for C{process_*} and C{python_*}; else
        L{SUM} for counters and histograms and L{WORKER} for the rest.
    """
    rule = MERGE_RULES.get(name)
    if rule is not None:
        return rule
    if name.startswith(_PER_PROCESS_PREFIXES):
        return WORKER
    if typ in _MONOTONIC:
        return SUM
    return WORKER


# A series: (sample name, label items in the family's order).
_Key = tuple[str, tuple[tuple[str, str], ...]]


@attrs.define
class _Family:
    """
    One family of one process (or of the retired total), indexed by series.

    @ivar series: key → C{[labels, value, exemplar]}, in the order read.
    """

    name: str
    type: str
    help: str
    unit: str
    series: dict[_Key, list[Any]] = attrs.Factory(dict)

    @property
    def retirable(self) -> bool:
        return self.type in _MONOTONIC and ruleFor(self.name, self.type) == SUM


_Snapshot = dict[str, _Family]


def _snapshot(families: Iterable[Sequence[Any]]) -> _Snapshot:
    """
    Index the families of one process by name and series. C{_created}
    samples are left out.
    """
    snapshot: _Snapshot = {}
    for name, typ, doc, unit, samples in families:
        family = snapshot.get(name)
        if family is None:
            family = snapshot[name] = _Family(name, typ, doc, unit)
        elif family.type != typ:
            continue
        for sampleName, labels, value, exemplar in samples:
            if sampleName.endswith("_created"):
                continue
            # Label order is the family's (every process runs the same
            # collectors): no need to sort it for a key.
            key = (sampleName, tuple(labels.items()))
            family.series[key] = [labels, value, exemplar]
    return snapshot


def _fold(into: _Snapshot, snapshot: _Snapshot, since: _Snapshot | None) -> None:
    """
    Add the retirable series of C{snapshot} to C{into}; with C{since}, only
    what they grew by since then.
    """
    for name, family in snapshot.items():
        if not family.retirable:
            continue
        total = into.get(name)
        if total is None:
            total = into[name] = _Family(name, family.type, family.help, family.unit)
        before = None if since is None else since.get(name)
        for key, (labels, value, _) in family.series.items():
            if before is not None and key in before.series:
                value = max(value - before.series[key][1], 0)
            kept = total.series.get(key)
            if kept is None:
                total.series[key] = [labels, value, None]
            else:
                kept[1] += value


class _Worker:
    """
    One worker generation, as the aggregator knows it.

    @ivar last: its last answer to L{CollectMetrics}, indexed.
    @ivar stopped: whether L{Aggregator.workerStopped} was called for it.
    @ivar tapKeys: the tap keys it is subscribed to (or being subscribed).
    """

    def __init__(self, workerId: int, generation: int, callRemote: CallRemote) -> None:
        self.workerId = workerId
        self.generation = generation
        self.callRemote = callRemote
        self.last: _Snapshot | None = None
        self.lastStats: dict[str, Any] | None = None
        self.stopped = False
        self.tapKeys: set[int] = set()

    @property
    def label(self) -> str:
        return str(self.workerId)


class _Missing(Exception):
    """
    A worker did not answer: why, in words.
    """


class _Merged(Collector):
    """
    The merged families of one scrape, as a collector to render.
    """

    def __init__(self, families: list[Metric]) -> None:
        self._families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def _exemplar(raw: Any) -> Exemplar | None:
    if raw is None:
        return None
    labels, value, timestamp = raw
    return Exemplar(dict(labels), value, timestamp)


def _sampleOrder(labelsKey: tuple[tuple[str, str], ...], sampleName: str) -> Any:
    """
    Where a sample goes in its series: buckets by bound, then count, sum.
    """
    le = dict(labelsKey).get("le")
    if le is not None:
        return (0, float(le))
    return (1 if sampleName.endswith("_count") else 2, 0.0)


def _render(families: dict[str, _Family]) -> list[Metric]:
    """
    The merged families as prometheus_client metrics, each series'
    samples together (a histogram's buckets in order).
    """
    metrics = []
    for family in families.values():
        try:
            metric = Metric(family.name, family.help, family.type, family.unit)
        except ValueError:
            _log.warn("metric family {name} of type {type} left out", name=family.name,
                      type=family.type)
            continue
        if family.type in ("histogram", "summary", "gaugehistogram"):
            groups: dict[tuple[tuple[str, str], ...], list[tuple[_Key, list[Any]]]] = {}
            for key, entry in family.series.items():
                series = tuple(item for item in key[1] if item[0] not in ("le", "quantile"))
                groups.setdefault(series, []).append((key, entry))
            ordered = []
            for members in groups.values():
                members.sort(key=lambda m: _sampleOrder(m[0][1], m[0][0]))
                ordered.extend(members)
        else:
            ordered = list(family.series.items())
        for (sampleName, _), (labels, value, exemplar) in ordered:
            metric.add_sample(sampleName, labels, value, exemplar=_exemplar(exemplar))
        metrics.append(metric)
    return metrics


class _MetricsMerge:
    """
    The merge of one scrape (see the module docstring), source by source.
    """

    def __init__(self) -> None:
        self.families: dict[str, _Family] = {}

    def add(self, snapshot: _Snapshot, label: str | None, live: bool) -> None:
        """
        Merge one process's families.

        @param label: the process's C{worker} label; L{None} for the
            retired total.
        @param live: whether the values are this scrape's (else, the last
            ones of a worker that did not answer, or the retired total:
            only their summed counters and histograms count).
        """
        for name, family in snapshot.items():
            rule = ruleFor(name, family.type)
            if rule == SUPERVISOR and label != _SUPERVISOR_LABEL:
                continue
            if not live and not family.retirable:
                continue
            if rule == WORKER and label is None:
                continue
            out = self.families.get(name)
            if out is None:
                out = self.families[name] = _Family(name, family.type, family.help, family.unit)
            elif out.type != family.type:
                _log.warn("metric family {name}: {type} here, {other} elsewhere; left out",
                          name=name, type=family.type, other=out.type)
                continue
            if rule == WORKER:
                for (sampleName, _), (labels, value, exemplar) in family.series.items():
                    labels = {**labels, "worker": label}
                    key = (sampleName, tuple(labels.items()))
                    out.series[key] = [labels, value, exemplar]
                continue
            for key, (labels, value, exemplar) in family.series.items():
                kept = out.series.get(key)
                if kept is None:
                    out.series[key] = [labels, value, exemplar]
                    continue
                kept[1] += value
                if exemplar is not None and (
                    kept[2] is None or (exemplar[2] or 0) > (kept[2][2] or 0)
                ):
                    kept[2] = exemplar


def _missing(answers: Iterable[tuple[Any, Any]]) -> list[dict[str, Any]]:
    """
    The workers that did not answer, and why: C{[{"worker", "error"}]}.
    """
    return [
        {"worker": worker.workerId, "error": str(answer)}
        for worker, answer in answers if isinstance(answer, _Missing)
    ]


def _worstState(states: list[str]) -> str:
    def rank(state: str) -> int:
        try:
            return STATE_ORDER.index(state)
        except ValueError:
            # An unknown word is shown rather than hidden behind "live".
            return 0
    return min(states, key=rank)


def _mergeEndpoints(views: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    """
    One endpoint's entry from the workers' entries for it.
    """
    merged = dict(views[0])
    for field in ("pending", "requests", "successes", "failures"):
        values = [v.get(field) for v in views if isinstance(v.get(field), (int, float))]
        if values:
            merged[field] = sum(values)
    successes, failures = merged.get("successes"), merged.get("failures")
    if isinstance(successes, int) and isinstance(failures, int):
        total = successes + failures
        merged["successRate"] = (successes / total) if total else None
    for field in ("consecutiveFailures", "backoffStep", "ejectedUntil"):
        numbers = [v[field] for v in views if isinstance(v.get(field), (int, float))]
        if numbers:
            merged[field] = max(numbers, key=float)
    ewmas = [
        (v["ewmaMs"], v.get("requests") or 0)
        for v in views if isinstance(v.get("ewmaMs"), (int, float))
    ]
    if ewmas:
        weight = sum(requests for _, requests in ewmas)
        if weight:
            mean = sum(ewma * requests for ewma, requests in ewmas) / weight
        else:
            mean = sum(ewma for ewma, _ in ewmas) / len(ewmas)
        merged["ewmaMs"] = round(mean, 3)
        merged["ewmaMsMax"] = max(ewma for ewma, _ in ewmas)
    states = [str(v.get("state")) for v in views if v.get("state") is not None]
    if states:
        merged["state"] = _worstState(states)
        counts: dict[str, int] = {}
        for state in sorted(states, key=lambda s: (s != merged["state"], s)):
            counts[state] = counts.get(state, 0) + 1
        merged["stateDetail"] = ", ".join(
            f"{state} on {count}/{workers}" for state, count in counts.items()
        )
    connections = [v["connections"] for v in views if isinstance(v.get("connections"), dict)]
    if connections:
        merged["connections"] = _sumCounts(connections)
    return merged


def _sumCounts(dicts: list[dict[str, Any]]) -> dict[str, Any]:
    """
    The sum of dicts of counts, key by key (a key whose values are not all
    numbers keeps the first one's).
    """
    merged = dict(dicts[0])
    for key in merged:
        values = [d.get(key) for d in dicts]
        if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
            merged[key] = sum(values)
    for d in dicts[1:]:
        for key, value in d.items():
            merged.setdefault(key, value)
    return merged


def _mergeBoundName(views: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    merged = dict(views[0])
    if any(v.get("panicking") for v in views):
        merged["panicking"] = True
    if "requests" in merged:
        merged["requests"] = sum(v.get("requests") or 0 for v in views)
    limits = [v["limits"] for v in views if isinstance(v.get("limits"), dict)]
    if limits:
        merged["limits"] = _sumCounts(limits)
    byAddress: dict[str, list[dict[str, Any]]] = {}
    for view in views:
        for endpoint in view.get("endpoints") or ():
            byAddress.setdefault(str(endpoint.get("address")), []).append(endpoint)
    merged["endpoints"] = [
        _mergeEndpoints(entries, workers) for entries in byAddress.values()
    ]
    return merged


def _mergeRouter(views: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    merged = dict(views[0])
    connections = [v["connections"] for v in views if isinstance(v.get("connections"), dict)]
    if connections:
        merged["connections"] = _sumCounts(connections)
    byName: dict[str, list[dict[str, Any]]] = {}
    for view in views:
        for name, bound in (view.get("boundNames") or {}).items():
            byName.setdefault(name, []).append(bound)
    merged["boundNames"] = {
        name: _mergeBoundName(entries, workers) for name, entries in byName.items()
    }
    return merged


def mergeStates(states: list[dict[str, Any]]) -> dict[str, Any]:
    """
    The routers of several workers' C{{"routers": ...}} merged into one (see
    the module docstring).

    @param states: each answering worker's state.
    @return: C{{name: router}}.
    """
    byRouter: dict[str, list[dict[str, Any]]] = {}
    for state in states:
        for name, router in (state.get("routers") or {}).items():
            byRouter.setdefault(name, []).append(router)
    return {name: _mergeRouter(views, len(states)) for name, views in byRouter.items()}


def _addCounts(into: dict[str, Any], more: dict[str, Any]) -> None:
    """
    Add the counts of one C{/admin/stats} entry to another, key by key:
    numbers summed, lists of numbers summed place by place (but
    C{bounds}, which are kept), dicts recursively; C{null} takes the other
    side's value.
    """
    for key, value in more.items():
        mine = into.get(key)
        if mine is None:
            into[key] = json.loads(json.dumps(value))
        elif key == "bounds":
            continue
        elif isinstance(mine, dict) and isinstance(value, dict):
            _addCounts(mine, value)
        elif isinstance(mine, list) and isinstance(value, list):
            if len(mine) == len(value):
                into[key] = [a + b for a, b in zip(mine, value, strict=True)]
        elif isinstance(mine, (int, float)) and isinstance(value, (int, float)):
            into[key] = mine + value


def mergeStats(answers: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """
    The routers of several C{{"routers": ...}} answers to L{CollectStats}
    summed into one (see the module docstring).

    @return: C{{name: {"connections": ..., "boundNames": {...}}}}, the
        routers and their bound names sorted by name.
    """
    merged: dict[str, Any] = {}
    for answer in answers:
        for name, router in (answer.get("routers") or {}).items():
            into = merged.setdefault(name, {"connections": None, "boundNames": {}})
            if router.get("connections") is not None:
                if into["connections"] is None:
                    into["connections"] = dict(router["connections"])
                else:
                    _addCounts(into["connections"], router["connections"])
            for bound, counts in (router.get("boundNames") or {}).items():
                kept = into["boundNames"].get(bound)
                if kept is None:
                    into["boundNames"][bound] = json.loads(json.dumps(counts))
                else:
                    _addCounts(kept, counts)
    return {
        name: {
            "connections": router["connections"],
            "boundNames": dict(sorted(router["boundNames"].items())),
        }
        for name, router in sorted(merged.items())
    }


def _mergeExplained(views: list[dict[str, Any]], workers: int) -> dict[str, Any]:
    """
    One bound name of an explain from the workers' entries for it: as the
    state merges it, each endpoint's C{score} the request-weighted mean
    (the plain mean before any request) and C{scoreMax} the highest.
    """
    merged = _mergeBoundName(views, workers)
    scores: dict[str, list[tuple[float, int]]] = {}
    for view in views:
        for endpoint in view.get("endpoints") or ():
            score = endpoint.get("score")
            if isinstance(score, (int, float)):
                scores.setdefault(str(endpoint.get("address")), []).append(
                    (score, endpoint.get("requests") or 0)
                )
    for endpoint in merged["endpoints"]:
        found = scores.get(str(endpoint.get("address")))
        if not found:
            continue
        weight = sum(requests for _, requests in found)
        if weight:
            mean = sum(score * requests for score, requests in found) / weight
        else:
            mean = sum(score for score, _ in found) / len(found)
        endpoint["score"] = round(mean, 3)
        endpoint["scoreMax"] = max(score for score, _ in found)
    merged["name"] = views[0].get("name")
    return merged


class WorkerTapHub(TapHub):
    """
    The supervisor's L{TapHub}: its subscribers' events come from the
    workers. It tells its aggregator whenever its subscribers change.
    """

    def __init__(
        self, stats: TelemetryStats, changed: Callable[[], None], **kwargs: Any
    ) -> None:
        super().__init__(stats, **kwargs)
        self._changed = changed

    def subscribe(self, tapFilter: TapFilter, consumer: IConsumer) -> Subscription:
        subscription = super().subscribe(tapFilter, consumer)
        self._changed()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        super().unsubscribe(subscription)
        self._changed()

    def close(self, reason: str = "shutdown") -> None:
        super().close(reason)
        self._changed()


@implementer(IWorkerAggregator)
class Aggregator:
    """
    Merges what the workers report (see the module docstring).

    @ivar tap: the L{TapHub} of C{/admin/tap}, fed by the workers.

    @param registry: the supervisor's own C{CollectorRegistry} (its process
        collectors, its L{MeshMetrics<meshproxy.telemetry.metrics.MeshMetrics>}
        if any), merged in as one more process.
    @param clock: the C{IReactorTime} of the timeouts and of the tap's
        heartbeats; the global reactor when L{None}.
    @param timeout: seconds a scrape or a state read waits for a worker.
    @param tapStats: what the tap hub counts its events and drops in:
        the supervisor's C{MeshMetrics.telemetry}, so that they show in
        C{/metrics}; a private one when L{None}.
    @param tapOptions: more keyword arguments of the L{TapHub}
        (C{maxEvents}, C{maxBytes}, C{maxSubscribers}, C{heartbeat}).
    """

    def __init__(
        self,
        registry: CollectorRegistry | None = None,
        *,
        clock: IReactorTime | None = None,
        timeout: float = TIMEOUT,
        tapStats: TelemetryStats | None = None,
        **tapOptions: Any,
    ) -> None:
        if clock is None:
            from twisted.internet import reactor

            clock = cast(IReactorTime, reactor)
        self._registry = registry
        self._clock: IReactorTime = clock
        self._timeout = timeout
        self._workers: dict[int, _Worker] = {}
        self._retired: _Snapshot = {}
        self._retiredStats: dict[str, Any] = {"routers": {}}
        self._tapKeys: dict[TapFilter, int] = {}
        self._nextTapKey = 1
        self.tap = WorkerTapHub(
            TelemetryStats() if tapStats is None else tapStats,
            self._tapChanged,
            clock=clock,
            **tapOptions,
        )

    # IWorkerAggregator

    def workerStarted(self, workerId: int, generation: int, callRemote: CallRemote) -> None:
        if workerId in self._workers:
            _log.warn("worker {worker} started again without stopping: stopped now",
                      worker=workerId)
            self.workerStopped(workerId)
        worker = self._workers[workerId] = _Worker(workerId, generation, callRemote)
        for key in self._tapKeys.values():
            self._tapSubscribe(worker, key)

    def workerStopped(self, workerId: int) -> None:
        worker = self._workers.pop(workerId, None)
        if worker is None:
            return
        worker.stopped = True
        worker.tapKeys.clear()
        if worker.last is not None:
            _fold(self._retired, worker.last, None)
        if worker.lastStats is not None:
            self._retiredStats = {"routers": mergeStats([self._retiredStats, worker.lastStats])}

    def exposition(self, accept: bytes | str | None) -> Deferred[tuple[bytes, str]]:
        d = self._askAll(CollectMetrics, self._readMetrics)
        return d.addCallback(self._mergeMetrics).addCallback(
            lambda families: render(self._registryOf(families), accept)
        )

    def state(self, perWorker: bool) -> Deferred[dict[str, Any]]:
        d = self._askAll(CollectState, lambda worker, answer: json.loads(answer["state"]))

        def merge(answers: list[tuple[_Worker, Any]]) -> dict[str, Any]:
            states = [(w, s) for w, s in answers if not isinstance(s, _Missing)]
            result: dict[str, Any] = {
                "routers": mergeStates([s for _, s in states]),
                "missing": [
                    {"worker": w.workerId, "error": str(s)}
                    for w, s in answers if isinstance(s, _Missing)
                ],
            }
            if perWorker:
                result["byWorker"] = {w.label: s.get("routers", {}) for w, s in states}
            return result

        return d.addCallback(merge)

    def stats(self, own: dict[str, Any]) -> Deferred[dict[str, Any]]:
        d = self._askAll(CollectStats, self._readStats)

        def merge(answers: list[tuple[_Worker, Any]]) -> dict[str, Any]:
            counted: list[dict[str, Any]] = [own, self._retiredStats]
            for worker, _ in answers:
                if worker.stopped:
                    continue
                # A worker that did not answer counts with its last answer:
                # no rate goes negative because it was slow once.
                if worker.lastStats is not None:
                    counted.append(worker.lastStats)
            return {"routers": mergeStats(counted), "missing": _missing(answers)}

        return d.addCallback(merge)

    def _readStats(self, worker: _Worker, answer: dict[str, Any]) -> dict[str, Any]:
        stats = json.loads(answer["stats"])
        if not isinstance(stats, dict):
            raise ValueError("stats: expected an object")
        if worker.stopped and worker.lastStats is None:
            # Answered after it was stopped, never before: its counts go to
            # the retired total now.
            self._retiredStats = {"routers": mergeStats([self._retiredStats, stats])}
        elif not worker.stopped:
            worker.lastStats = stats
        return stats

    def explain(self, router: str, explained: dict[str, Any]) -> Deferred[dict[str, Any]]:
        names = [str(entry.get("name")) for entry in explained.get("boundNames") or ()]
        if not names:
            return succeed(dict(explained, missing=[]))
        d = self._askAll(
            lambda: (CollectExplain, {
                "router": router,
                "names": json.dumps(names, separators=(",", ":")).encode("utf-8"),
            }),
            lambda worker, answer: json.loads(answer["entries"]),
        )

        def merge(answers: list[tuple[_Worker, Any]]) -> dict[str, Any]:
            live = [a for _, a in answers if not isinstance(a, _Missing) and isinstance(a, dict)]
            result = dict(explained)
            bound = []
            for entry in explained.get("boundNames") or ():
                views = [a[entry["name"]] for a in live if isinstance(a.get(entry["name"]), dict)]
                bound.append(_mergeExplained(views, len(live)) if views else entry)
            result["boundNames"] = bound
            result["endpoints"] = {entry["name"]: entry["endpoints"] for entry in bound}
            result["missing"] = _missing(answers)
            return result

        return d.addCallback(merge)

    def recentNames(self, router: str) -> Deferred[dict[str, Any]]:
        d = self._askAll(
            lambda: (CollectRecentNames, {"router": router}),
            lambda worker, answer: json.loads(answer["names"]),
        )

        def merge(answers: list[tuple[_Worker, Any]]) -> dict[str, Any]:
            lists = [
                [str(n) for n in a] for _, a in answers
                if not isinstance(a, _Missing) and isinstance(a, list)
            ]
            names: dict[str, None] = {}
            for position in range(max((len(each) for each in lists), default=0)):
                for each in lists:
                    if position < len(each):
                        names.setdefault(each[position])
            return {"names": list(names), "missing": _missing(answers)}

        return d.addCallback(merge)

    # Asking the workers

    @property
    def workers(self) -> tuple[int, ...]:
        """
        The slots of the live workers, in order.
        """
        return tuple(sorted(self._workers))

    def _askAll(
        self, command: Any, read: Callable[[_Worker, dict[str, Any]], Any]
    ) -> Deferred[list[tuple[_Worker, Any]]]:
        """
        Ask every live worker C{command}, each within the timeout.

        @param command: an C{amp.Command} without arguments, or a callable
            returning C{(commandType, arguments)}.
        @param read: turns a worker's answer into what is returned for it;
            an exception it raises makes the worker missing.
        @return: a Deferred firing with C{(worker, answer read)} per worker,
            in slot order, the answer being a L{_Missing} for a worker that
            failed or did not answer in time. It never fails.
        """
        asked = []
        for workerId in sorted(self._workers):
            worker = self._workers[workerId]
            asked.append(self._ask(worker, command, read))
        return gatherResults(asked)

    def _ask(
        self, worker: _Worker, command: Any, read: Callable[[_Worker, dict[str, Any]], Any]
    ) -> Deferred[tuple[_Worker, Any]]:
        try:
            if isinstance(command, type):
                d = worker.callRemote(command)
            else:
                # A command with arguments: a callable giving both.
                commandType, arguments = command()
                d = worker.callRemote(commandType, **arguments)
        except Exception as e:
            d = Deferred()
            d.errback(Failure(e))
        d.addTimeout(self._timeout, self._clock)
        d.addCallback(lambda answer: read(worker, answer))

        def missing(failure: Failure) -> _Missing:
            from twisted.internet.defer import TimeoutError

            if failure.check(TimeoutError):
                return _Missing(f"no answer within {self._timeout:g} s")
            return _Missing(failure.getErrorMessage() or repr(failure.value))

        d.addErrback(missing)
        return d.addCallback(lambda answer: (worker, answer))

    # Metrics

    def _readMetrics(self, worker: _Worker, answer: dict[str, Any]) -> _Snapshot:
        snapshot = _snapshot(loadFamilies(answer["families"]))
        if worker.stopped:
            # Answered after it was stopped: what it counted since its
            # previous answer goes to the retired total.
            _fold(self._retired, snapshot, worker.last)
        worker.last = snapshot
        return snapshot

    def _mergeMetrics(self, answers: list[tuple[_Worker, Any]]) -> list[Metric]:
        merge = _MetricsMerge()
        if self._registry is not None:
            own = _snapshot(familiesOf(self._registry))
            merge.add(own, _SUPERVISOR_LABEL, True)
        up = _Family(
            "meshproxy_worker_scrape_up", "gauge",
            "1 when the worker answered this scrape in time, else 0 (its counters then"
            " count with its last answer).", "",
        )
        missing = 0
        answered = 0
        retiredEndpoints = self._retiredEndpoints()
        reported: set[tuple[str, _Key]] = set()
        for worker, answer in answers:
            if worker.stopped:
                # Its counts are in the retired total already.
                continue
            labels = {"worker": worker.label}
            ok = not isinstance(answer, _Missing)
            up.series[("meshproxy_worker_scrape_up", (("worker", worker.label),))] = [
                labels, 1 if ok else 0, None,
            ]
            if ok:
                answered += 1
                merge.add(answer, worker.label, True)
                if retiredEndpoints:
                    for name, family in answer.items():
                        if name in self._retired:
                            reported.update((name, key) for key in family.series)
            else:
                missing += 1
                _log.warn("worker {worker} missing from a scrape: {why}",
                          worker=worker.workerId, why=str(answer))
                if worker.last is not None:
                    merge.add(worker.last, worker.label, False)
        if answered and not missing and retiredEndpoints:
            self._forgetEndpoints(reported)
        merge.add(self._retired, None, False)
        merge.add({up.name: up}, _SUPERVISOR_LABEL, True)
        return _render(merge.families)

    def _retiredEndpoints(self) -> bool:
        """
        Whether the retired total holds series of endpoints.
        """
        return any(
            label == "endpoint"
            for family in self._retired.values()
            for _, items in family.series
            for label, _ in items
        )

    def _forgetEndpoints(self, reported: set[tuple[str, _Key]]) -> None:
        """
        Forget the retired series of endpoints no live worker reports.
        """
        for name, family in self._retired.items():
            for key in [
                key for key in family.series
                if any(label == "endpoint" for label, _ in key[1])
                and (name, key) not in reported
            ]:
                del family.series[key]

    @staticmethod
    def _registryOf(families: list[Metric]) -> CollectorRegistry:
        registry = CollectorRegistry(auto_describe=False)
        registry.register(_Merged(families))
        return registry

    # Tap

    def _tapChanged(self) -> None:
        """
        Make the workers' subscriptions follow the hub's: one per distinct
        filter of its subscribers.
        """
        wanted = {subscription.filter for subscription in self.tap.subscriptions}
        for tapFilter in list(self._tapKeys):
            if tapFilter not in wanted:
                key = self._tapKeys.pop(tapFilter)
                for worker in self._workers.values():
                    if key in worker.tapKeys:
                        worker.tapKeys.discard(key)
                        self._call(worker, TapUnsubscribe, key=key)
        for tapFilter in wanted:
            if tapFilter not in self._tapKeys:
                key = self._tapKeys[tapFilter] = self._nextTapKey
                self._nextTapKey += 1
                for worker in self._workers.values():
                    self._tapSubscribe(worker, key)

    def _call(self, worker: _Worker, command: Any, **arguments: Any) -> Deferred[Any]:
        """
        Call a worker, logging (not raising) a failure.
        """
        try:
            d = worker.callRemote(command, **arguments)
        except Exception as e:
            d = Deferred()
            d.errback(Failure(e))

        def failed(failure: Failure) -> None:
            if not worker.stopped:
                _log.warn("worker {worker}: {command} failed: {why}", worker=worker.workerId,
                          command=command.__name__, why=failure.getErrorMessage())

        return d.addErrback(failed)

    def _filterOf(self, key: int) -> TapFilter | None:
        for tapFilter, known in self._tapKeys.items():
            if known == key:
                return tapFilter
        return None

    def _tapSubscribe(self, worker: _Worker, key: int) -> None:
        tapFilter = self._filterOf(key)
        if tapFilter is None:
            return
        worker.tapKeys.add(key)
        d = self._call(worker, TapSubscribe, key=key, filter=dumpFilter(tapFilter))
        d.addCallback(lambda answer: None if answer is None else self._tapPoll(worker, key))

    def _tapPoll(self, worker: _Worker, key: int) -> None:
        if worker.stopped or key not in worker.tapKeys:
            return
        d = self._call(worker, TapEvents, key=key)

        def got(answer: dict[str, Any] | None) -> None:
            if answer is None:
                worker.tapKeys.discard(key)
                return
            self._tapDeliver(key, answer["events"])
            if answer["ended"]:
                worker.tapKeys.discard(key)
                return
            self._tapPoll(worker, key)

        d.addCallback(got)

    def _tapDeliver(self, key: int, events: bytes) -> None:
        """
        Hand a worker's events to the hub's subscribers of that filter.
        """
        tapFilter = self._filterOf(key)
        if tapFilter is None or not events:
            return
        frames = [frame + b"\n\n" for frame in events.split(b"\n\n") if frame]
        for subscription in self.tap.subscriptions:
            if subscription.filter == tapFilter:
                for frame in frames:
                    subscription.send(frame)
