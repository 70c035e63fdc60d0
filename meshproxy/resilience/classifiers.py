"""
Response classifiers: is a try a success, a failure that may be retried, or
a failure that may not?

Every kind follows the same rules but for 5xx answers:

 - a status in C{retryableStatusCodes} (say 503 or 429) is a failure, which
   is retryable when the request is idempotent (GET HEAD OPTIONS TRACE PUT
   DELETE, and POST with an C{Idempotency-Key} when C{idempotencyKey} is
   on), whatever the kind;
 - an upstream answering C{mesh-retryable: true} makes any failure
   retryable, whatever the method (the upstream says it did nothing);
 - anything else below 500 is a success.

The kinds decide 5xx answers: C{"nonRetryable5XX"} fails them,
C{"retryableRead5XX"} makes them retryable for GET HEAD OPTIONS TRACE,
C{"retryableIdempotent5XX"} for every idempotent request, and
C{"allSuccessful"} counts them as successes.

C{"grpc"} judges a gRPC response by its C{grpc-status} (L{classifyGrpc}):
OK is a success, a code in C{retryableCodes} a failure retryable whatever
the method (every gRPC call is a POST; UNAVAILABLE says the call was not
processed), a code of L{FAILURE_CODES<meshproxy.grpc.FAILURE_CODES>} a
failure, any other code a success (the application's answer). Other
responses it judges by their status as C{"nonRetryable5XX"} does.

Errors without a response (connection refused or reset, timeouts) are not
classified here: the exchange decides those.
"""

from __future__ import annotations

from collections.abc import Iterable

from zope.interface import implementer

from meshproxy.grpc import FAILURE_CODES, UNAVAILABLE, codeOf
from meshproxy.resilience.interfaces import IClassifier

__all__ = [
    "SUCCESS",
    "RETRYABLE",
    "FAILURE",
    "Classifier",
    "Kinds",
    "ReadMethods",
    "IdempotentMethods",
]

SUCCESS = 0
RETRYABLE = 1
FAILURE = 2

ReadMethods = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE"})
IdempotentMethods = ReadMethods | {b"PUT", b"DELETE"}

Kinds = (
    "nonRetryable5XX", "retryableRead5XX", "retryableIdempotent5XX", "allSuccessful", "grpc",
)


@implementer(IClassifier)
class Classifier:
    """
    A response classifier of one of the L{Kinds} (see the module docstring).

    @ivar kind: the kind.
    @ivar retryableStatusCodes: a frozenset of the status codes that are
        retryable failures for idempotent requests.
    @ivar idempotencyKey: whether a POST with an C{Idempotency-Key} counts as
        idempotent.
    @ivar grpc: whether gRPC responses are judged by their C{grpc-status}
        (the C{"grpc"} kind).
    @ivar retryableCodes: a frozenset of the gRPC status codes (numbers)
        that are retryable failures, for the C{"grpc"} kind (empty for the
        others).
    """

    __slots__ = (
        "kind",
        "retryableStatusCodes",
        "idempotencyKey",
        "grpc",
        "retryableCodes",
        "_idempotent",
        "_fail5xx",
        "_retry5xx",
        "_retry5xxPost",
    )

    def __init__(
        self,
        kind: str,
        retryableStatusCodes: Iterable[int] = (),
        idempotencyKey: bool = False,
        retryableCodes: Iterable[str | int] | None = None,
    ) -> None:
        """
        @param kind: one of L{Kinds}.
        @param retryableStatusCodes: status codes (100 to 599) that are
            retryable failures for idempotent requests.
        @param idempotencyKey: whether a POST with an C{Idempotency-Key}
            header counts as idempotent.
        @param retryableCodes: for the C{"grpc"} kind, the gRPC status codes
            (names as the spec spells them, or numbers) that are retryable
            failures; L{None} for UNAVAILABLE alone.
        @raise ValueError: on an unknown kind, a status code that is not an
            integer between 100 and 599, a gRPC code that is none of the 17,
            or gRPC codes given to another kind.
        """
        if kind not in Kinds:
            raise ValueError(
                f"unknown classifier kind {kind!r}: expected one of {', '.join(Kinds)}"
            )
        codes = frozenset(retryableStatusCodes)
        for code in codes:
            if type(code) is not int or not 100 <= code <= 599:
                raise ValueError(
                    f"retryable status codes are integers from 100 to 599, got {code!r}"
                )
        self.grpc = kind == "grpc"
        if retryableCodes is None:
            grpcCodes = frozenset([UNAVAILABLE]) if self.grpc else frozenset()
        elif not self.grpc:
            raise ValueError("retryable gRPC codes are only for the grpc kind")
        else:
            grpcCodes = frozenset(codeOf(code) for code in retryableCodes)
        self.retryableCodes = grpcCodes
        self.kind = kind
        self.retryableStatusCodes = codes
        self.idempotencyKey = bool(idempotencyKey)
        self._idempotent = IdempotentMethods
        self._fail5xx = kind != "allSuccessful"
        if kind == "retryableRead5XX":
            self._retry5xx = ReadMethods
        elif kind == "retryableIdempotent5XX":
            self._retry5xx = IdempotentMethods
        else:
            self._retry5xx = frozenset()
        self._retry5xxPost = self.idempotencyKey and kind == "retryableIdempotent5XX"

    def classify(
        self,
        method: bytes,
        status: int,
        retryableHeader: bool = False,
        hasIdempotencyKey: bool = False,
    ) -> int:
        """
        See L{IClassifier.classify}.
        """
        if status in self.retryableStatusCodes:
            if (
                method in self._idempotent
                or retryableHeader
                or (hasIdempotencyKey and self.idempotencyKey and method == b"POST")
            ):
                return RETRYABLE
            return FAILURE
        if 500 <= status <= 599 and self._fail5xx:
            if (
                method in self._retry5xx
                or retryableHeader
                or (hasIdempotencyKey and self._retry5xxPost and method == b"POST")
            ):
                return RETRYABLE
            return FAILURE
        return SUCCESS

    def classifyGrpc(self, code: int) -> int:
        """
        See L{IClassifier.classifyGrpc}.
        """
        if code == 0:
            return SUCCESS
        if code in self.retryableCodes:
            return RETRYABLE
        if code in FAILURE_CODES or code > 16:
            return FAILURE
        return SUCCESS

    def isIdempotent(self, method: bytes, hasIdempotencyKey: bool = False) -> bool:
        """
        See L{IClassifier.isIdempotent}.
        """
        return method in self._idempotent or (
            hasIdempotencyKey and self.idempotencyKey and method == b"POST"
        )

    def __repr__(self) -> str:
        return (
            f"Classifier({self.kind!r}, "
            f"retryableStatusCodes={sorted(self.retryableStatusCodes)!r}, "
            f"idempotencyKey={self.idempotencyKey!r}"
            + (f", retryableCodes={sorted(self.retryableCodes)!r})" if self.grpc else ")")
        )
