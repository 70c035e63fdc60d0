"""
The interfaces of the resilience pieces that come in several kinds: response
classifiers and failure accrual policies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from zope.interface import Attribute, Interface

if TYPE_CHECKING:
    from meshproxy.balancing.node import Node

__all__ = ["IClassifier", "IAccrualPolicy"]


class IClassifier(Interface):
    """
    Judges each try of a request from its method and response status:
    success, a failure that may be retried, or a failure that may not.
    """

    grpc = Attribute(
        "Whether gRPC responses are judged by their grpc-status (classifyGrpc) rather than"
        " by their HTTP status."
    )

    def classify(method: bytes, status: int, retryableHeader: bool, hasIdempotencyKey: bool) -> int:
        """
        Judge one response.

        @param method: the request method, as sent (C{b"GET"}).
        @param status: the response status code.
        @param retryableHeader: whether the upstream answered with
            C{mesh-retryable: true}.
        @param hasIdempotencyKey: whether the request carried an
            C{Idempotency-Key} header.
        @return: one of L{meshproxy.resilience.classifiers.SUCCESS},
            C{RETRYABLE} or C{FAILURE}.
        """

    def classifyGrpc(code: int) -> int:
        """
        Judge a gRPC response by its status code (from a trailers-only
        response's head, or from the trailers), when L{grpc} is true.

        @param code: the C{grpc-status} code.
        @return: C{SUCCESS}, C{RETRYABLE} (retryable whatever the method:
            the codes configured say the call was not processed) or
            C{FAILURE}.
        """

    def isIdempotent(method: bytes, hasIdempotencyKey: bool) -> bool:
        """
        Whether a request may be sent twice without harm (a try that timed
        out, for instance, may be retried only if so).

        @param method: the request method.
        @param hasIdempotencyKey: whether the request carried an
            C{Idempotency-Key} header.
        """


class IAccrualPolicy(Interface):
    """
    Decides, from the outcomes of the requests sent to one live node, when
    the node is to be ejected. A policy is an immutable value: what it
    remembers of a node lives in the node's C{accrual} slot, which it alone
    reads and writes.
    """

    description = Attribute("A short text for logs, e.g. C{'5 consecutive failures'}.")

    def recordSuccess(node: Node, now: float) -> None:
        """
        Record a successful request on a live node.

        @param node: a L{meshproxy.balancing.node.Node}.
        @param now: the clock time.
        """

    def recordFailure(node: Node, now: float) -> bool:
        """
        Record a failed request on a live node.

        @param node: a L{meshproxy.balancing.node.Node}.
        @param now: the clock time.
        @return: whether the node is to be ejected.
        """

    def reset(node: Node) -> None:
        """
        Forget what was recorded of C{node} (it was revived, or the policy
        is new to it).
        """
