"""
A client of etcd v3 through its JSON gateway (C{POST /v3/...} over HTTP/1.1,
keys and values base64 in JSON), on treq: no gRPC stack.

What meshproxy needs of etcd, and no more:

  - L{EtcdClient.range}, L{EtcdClient.put}, L{EtcdClient.delete}: reads and
    writes of keys and prefixes;
  - L{EtcdClient.txn}, L{EtcdClient.createIfAbsent},
    L{EtcdClient.compareAndSwap}: conditional writes (create-only, and
    compare-and-swap on a key's C{mod_revision});
  - L{EtcdClient.leaseGrant}, L{EtcdClient.leaseKeepAlive},
    L{EtcdClient.leaseRevoke}: leases, so that a key dies with the process
    that keeps it alive;
  - L{EtcdClient.watch}: a L{Watch} following a key or prefix from a
    revision, which resumes from the last revision it saw when the
    connection drops (jittered backoff from 100 ms to 1 s, across the
    endpoints), and says when etcd compacted that revision away;
  - L{PrefixFollower}: a whole prefix read, then watched, read again when
    the watch cannot resume, with the outages counted and timed (what the
    etcd namer and the rules store both follow their keys with).

Every request goes to one endpoint at a time: the client sticks to the one
that last worked and moves to the next when it cannot be reached.
Authentication (a user name and password, for a token sent in the
C{Authorization} header, renewed when etcd says it is no longer valid) and
TLS (a CA bundle, and a client certificate) are optional.

Every answer is read with a bound (L{MaxResponseBytes} for a whole answer,
L{MaxWatchLineBytes} for one message of a watch): a bigger one is an error,
never memory growth.

etcd's 64-bit integers come as JSON strings in the gateway's answers, and
fields with a zero value are left out: the parsing here reads both.
"""

from __future__ import annotations

import base64
import json
import random as _random
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs
from twisted.internet.defer import CancelledError, Deferred, TimeoutError
from twisted.internet.error import ConnectError, DNSLookupError
from twisted.internet.protocol import Protocol
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import ResponseDone
from twisted.web.http import PotentialDataLoss
from twisted.web.http_headers import Headers
from zope.interface import Interface, implementer

from meshproxy.resilience.backoff import Backoff
from meshproxy.transport.webpool import quietPool

if TYPE_CHECKING:
    from twisted.internet.interfaces import IDelayedCall
    from twisted.web.iweb import IResponse

__all__ = [
    "EtcdClient",
    "EtcdError",
    "EtcdUnavailable",
    "FollowsPrefix",
    "IPrefixListener",
    "KeyValue",
    "MaxResponseBytes",
    "MaxWatchLineBytes",
    "PrefixFollower",
    "TLSFiles",
    "Watch",
    "WatchEvent",
    "clientFor",
    "compare",
    "opDelete",
    "opPut",
    "opRange",
    "prefixEnd",
]

MaxResponseBytes = 64 << 20
"""The largest answer read (a range of a whole prefix)."""

MaxWatchLineBytes = 4 << 20
"""
The largest message of a watch stream. Watches ask etcd to split big
answers (C{fragment}), whose pieces are at most etcd's request limit
(1.5 MiB by default) before base64: 4 MiB holds one with room to spare.
"""

#: The gRPC codes the gateway answers with, as meshproxy uses them.
NOT_FOUND = 5
PERMISSION_DENIED = 7
OUT_OF_RANGE = 11
UNAVAILABLE = 14
UNAUTHENTICATED = 16

#: The reconnect backoff of watches and of the users of this client that
#: retry (seconds): jittered, from 100 ms, at most 1 s.
BACKOFF_MIN = 0.1
BACKOFF_MAX = 1.0


class EtcdError(Exception):
    """
    etcd answered with an error, or its answer could not be understood.

    @ivar code: the gRPC status code etcd gave (C{5} not found, C{7}
        permission denied, C{11} compacted, C{16} unauthenticated...), or
        L{None} when the error is not etcd's.
    """

    def __init__(self, message: str, code: int | None = None) -> None:
        super().__init__(message)
        self.code = code


class EtcdUnavailable(EtcdError):
    """
    No endpoint could be reached (refused, timed out, the connection lost
    before an answer).
    """


@attrs.frozen
class TLSFiles:
    """
    TLS to etcd: PEM files, each optional.

    @ivar ca: the CA bundle etcd's certificate must chain to; L{None} for
        the system's trust store.
    @ivar cert: a client certificate (for etcd's C{--client-cert-auth}).
    @ivar key: its private key (the certificate's file when L{None}).
    """

    ca: str | None = None
    cert: str | None = None
    key: str | None = None


@attrs.frozen
class KeyValue:
    """
    One key as etcd holds it.

    @ivar key: the key (UTF-8; bytes that are not come back as they were
        when the key is given to the client again).
    @ivar value: the value.
    @ivar modRevision: the revision of its last change.
    @ivar createRevision: the revision it was created at.
    @ivar version: how many times it was written since its creation.
    @ivar lease: the ID of the lease it is attached to, 0 for none.
    """

    key: str
    value: bytes
    modRevision: int
    createRevision: int = 0
    version: int = 0
    lease: int = 0


@attrs.frozen
class WatchEvent:
    """
    One change a watch saw.

    @ivar kind: C{"put"} or C{"delete"}.
    @ivar kv: the key after a put; after a delete, the key with an empty
        value and the revision of the deletion as C{modRevision}.
    """

    kind: str
    kv: KeyValue


def _keyBytes(key: str | bytes) -> bytes:
    return key if isinstance(key, bytes) else key.encode("utf-8", "surrogateescape")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _unb64(text: object) -> bytes:
    if text is None:
        return b""
    if not isinstance(text, str):
        raise EtcdError("expected base64 text, got %r" % (type(text).__name__,))
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise EtcdError("invalid base64 in etcd's answer") from None


def _int(value: object) -> int:
    """
    One of etcd's 64-bit integers: a JSON string (or number), absent for 0.
    """
    if value is None:
        return 0
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise EtcdError("expected an integer, got %r" % (value,))
    try:
        return int(value)
    except ValueError:
        raise EtcdError("expected an integer, got %r" % (value,)) from None


def prefixEnd(key: str | bytes) -> bytes:
    """
    The end of the range of every key starting with C{key}, as etcd wants
    it for a prefix (C{range_end}): C{key} with its last byte below 0xff
    incremented, and what follows dropped.

    @return: the range end; C{b"\\0"} (every key from C{key} on) when
        C{key} is empty or only 0xff bytes.
    """
    data = bytearray(_keyBytes(key))
    while data:
        if data[-1] < 0xFF:
            data[-1] += 1
            return bytes(data)
        del data[-1]
    return b"\0"


def _keyValue(raw: object) -> KeyValue:
    if not isinstance(raw, dict):
        raise EtcdError("expected a key-value object in etcd's answer")
    return KeyValue(
        key=_unb64(raw.get("key")).decode("utf-8", "surrogateescape"),
        value=_unb64(raw.get("value")),
        modRevision=_int(raw.get("mod_revision")),
        createRevision=_int(raw.get("create_revision")),
        version=_int(raw.get("version")),
        lease=_int(raw.get("lease")),
    )


def _revision(answer: dict[str, Any]) -> int:
    header = answer.get("header")
    return _int(header.get("revision")) if isinstance(header, dict) else 0


def _errorOf(answer: object, status: int | None = None) -> EtcdError | None:
    """
    The error an answer carries (C{{"error": ..., "code": N}}), if any.
    """
    if isinstance(answer, dict) and "error" in answer:
        message = answer.get("message") or answer.get("error")
        code = answer.get("code")
        return EtcdError(
            "etcd: %s" % (message,), code if isinstance(code, int) else None
        )
    if status is not None and status != 200:
        return EtcdError("etcd answered HTTP %d" % (status,))
    return None


# -- conditional writes -------------------------------------------------------

def compare(key: str | bytes, target: str, value: int | bytes, result: str = "EQUAL") -> dict:
    """
    One comparison of a transaction (L{EtcdClient.txn}).

    @param target: C{"CREATE"} (C{create_revision}, 0 for a key that does
        not exist), C{"MOD"} (C{mod_revision}), C{"VERSION"} or
        C{"VALUE"}.
    @param value: the revision or version (an int), or the value (bytes).
    @param result: C{"EQUAL"}, C{"GREATER"}, C{"LESS"} or C{"NOT_EQUAL"}.
    """
    field = {
        "CREATE": "create_revision",
        "MOD": "mod_revision",
        "VERSION": "version",
        "VALUE": "value",
    }[target]
    shown: object = _b64(value) if isinstance(value, bytes) else str(value)
    return {"result": result, "target": target, "key": _b64(_keyBytes(key)), field: shown}


def opPut(key: str | bytes, value: bytes, lease: int | None = None) -> dict:
    """
    A put in a transaction.
    """
    request: dict[str, Any] = {"key": _b64(_keyBytes(key)), "value": _b64(value)}
    if lease:
        request["lease"] = str(lease)
    return {"request_put": request}


def opRange(key: str | bytes) -> dict:
    """
    A read of one key in a transaction.
    """
    return {"request_range": {"key": _b64(_keyBytes(key))}}


def opDelete(key: str | bytes) -> dict:
    """
    A delete of one key in a transaction.
    """
    return {"request_delete_range": {"key": _b64(_keyBytes(key))}}


# -- reading answers ----------------------------------------------------------

_DONE = Failure(ResponseDone())

class _Collect(Protocol):
    """
    Read a whole body, up to a bound.
    """

    def __init__(self, finished: Deferred[bytes], limit: int) -> None:
        self._finished = finished
        self._limit = limit
        self._size = 0
        self._parts: list[bytes] = []
        self._done = False

    def dataReceived(self, data: bytes) -> None:
        if self._done:
            return
        self._size += len(data)
        if self._size > self._limit:
            self._done = True
            self._parts = []
            self.transport.stopProducing()  # type: ignore[union-attr]
            self._finished.errback(
                EtcdError("etcd's answer is larger than %d bytes" % (self._limit,))
            )
            return
        self._parts.append(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self._done:
            return
        self._done = True
        if reason.check(ResponseDone, PotentialDataLoss):
            self._finished.callback(b"".join(self._parts))
        else:
            self._finished.errback(reason)

    def cancel(self) -> None:
        if not self._done:
            self._done = True
            self.transport.stopProducing()  # type: ignore[union-attr]


def _readBody(response: IResponse, limit: int) -> Deferred[bytes]:
    collector: _Collect

    def cancel(d: Deferred[bytes]) -> None:
        collector.cancel()

    finished: Deferred[bytes] = Deferred(cancel)
    collector = _Collect(finished, limit)
    response.deliverBody(collector)
    return finished


def _tlsPolicy(tls: TLSFiles) -> Any:
    """
    The HTTPS policy of an agent talking to etcd with C{tls}'s files.
    """
    from twisted.internet import ssl
    from twisted.web.iweb import IPolicyForHTTPS

    trustRoot: Any = None
    if tls.ca is not None:
        with open(tls.ca, "rb") as f:
            bundle = f.read()
        authorities = _pemCertificates(bundle, tls.ca)
        trustRoot = ssl.trustRootFromCertificates(
            [ssl.Certificate.loadPEM(pem) for pem in authorities]
        )
    client = None
    if tls.cert is not None:
        with open(tls.cert, "rb") as f:
            certPEM = f.read()
        keyPEM = certPEM
        if tls.key is not None:
            with open(tls.key, "rb") as f:
                keyPEM = f.read()
        client = ssl.PrivateCertificate.loadPEM(
            _pemCertificates(certPEM, tls.cert)[0] + b"\n" + keyPEM
        )

    @implementer(IPolicyForHTTPS)
    class Policy:
        def creatorForNetloc(self, hostname: bytes, port: int) -> Any:
            return ssl.optionsForClientTLS(
                hostname.decode("ascii"), trustRoot=trustRoot, clientCertificate=client
            )

    return Policy()


def _pemCertificates(data: bytes, path: str) -> list[bytes]:
    begin, end = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"
    found = []
    rest = data
    while True:
        start = rest.find(begin)
        if start == -1:
            break
        stop = rest.find(end, start)
        if stop == -1:
            break
        found.append(rest[start : stop + len(end)] + b"\n")
        rest = rest[stop + len(end) :]
    if not found:
        raise ValueError("%s: no PEM certificate in it" % (path,))
    return found


def _wasCancelled(failure: Failure) -> bool:
    """
    Whether a request failed because it was cancelled (perhaps wrapped by
    the HTTP client: in a L{ResponseFailed} once the request was sent, in a
    L{RequestTransmissionFailed} while it was being sent).
    """
    from twisted.web._newclient import _WrapperException

    if failure.check(CancelledError):
        return True
    if isinstance(failure.value, _WrapperException):
        return any(reason.check(CancelledError) for reason in failure.value.reasons)
    return False


def _isTransportFailure(failure: Failure, *, sent: bool) -> bool:
    """
    Whether a request failed because its endpoint could not be reached or
    went away (rather than etcd answering an error).

    @param sent: whether failures after the request may have been sent
        count (only for requests that are safe to send twice).
    """
    from twisted.web._newclient import RequestNotSent, ResponseFailed
    from twisted.web.client import RequestTransmissionFailed

    if failure.check(ConnectError, DNSLookupError, RequestNotSent):
        return True
    if not sent:
        return False
    return bool(failure.check(ResponseFailed, RequestTransmissionFailed, TimeoutError))


def _reason(failure: Failure) -> str:
    """
    A failure in a few words, for logs and errors (no traceback).
    """
    from twisted.web._newclient import ResponseFailed

    error = failure.value
    if isinstance(error, ResponseFailed) and error.reasons:
        inner = error.reasons[0].value
        return "connection lost (%s)" % (inner.__class__.__name__,)
    if isinstance(error, (TimeoutError, CancelledError)):
        return "no answer in time"
    if isinstance(error, DNSLookupError):
        return "unknown host"
    if isinstance(error, ConnectError):
        from twisted.internet import error as errors

        for kind, words in (
            (errors.ConnectionRefusedError, "connection refused"),
            (errors.TimeoutError, "connect timed out"),
        ):
            if isinstance(error, kind):
                return words
        return str(error).rstrip(".") or error.__class__.__name__
    return str(error) or error.__class__.__name__


# -- the client ---------------------------------------------------------------

class EtcdClient:
    """
    A client of one etcd cluster, through the JSON gateway of its members.

    Every method returns a L{Deferred}; it fails with L{EtcdUnavailable}
    when no endpoint can be reached, with L{EtcdError} when etcd answers
    with an error. Requests that are safe to repeat (reads, puts, deletes,
    keep-alives) are tried on each endpoint in turn; a transaction or a
    lease grant is tried on another endpoint only when the connection could
    not be made (it may otherwise have been applied).

    @ivar endpoints: the base URLs (C{http://127.0.0.1:2379}).
    @ivar timeout: seconds a request may take, connecting included.
    @ivar errors: how many requests failed (counted once per request).
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        reactor: Any,
        username: str | None = None,
        password: str | None = None,
        tls: TLSFiles | None = None,
        timeout: float = 5.0,
        maxResponseBytes: int = MaxResponseBytes,
        maxWatchLineBytes: int = MaxWatchLineBytes,
        random: Any = None,
    ) -> None:
        """
        @param endpoints: the members' base URLs, C{http://} or C{https://},
            at least one.
        @param reactor: the reactor to connect and time with.
        @param username: the etcd user, or L{None} without authentication.
        @param password: its password (needed with C{username}).
        @param tls: the files for C{https://} endpoints, or L{None} for the
            system's trust store and no client certificate.
        @param timeout: seconds a request may take.
        @param maxResponseBytes: the largest answer read.
        @param maxWatchLineBytes: the largest message of a watch.
        @param random: the randomness of the backoff (C{random()}).
        @raise ValueError: on no endpoint, a URL that is not C{http://} or
            C{https://}, a user without a password, or TLS files that cannot
            be read or are not PEM.
        """
        from treq.client import HTTPClient
        from twisted.web.client import Agent

        if not endpoints:
            raise ValueError("at least one etcd endpoint is needed")
        checked = []
        for url in endpoints:
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError("expected an http:// or https:// URL, got %r" % (url,))
            checked.append(url.rstrip("/"))
        if (username is None) != (password is None):
            raise ValueError("username and password go together")
        self.endpoints = tuple(checked)
        self.timeout = timeout
        self.maxResponseBytes = maxResponseBytes
        self.maxWatchLineBytes = maxWatchLineBytes
        self.errors = 0
        self._reactor = reactor
        self._username = username
        self._password = password
        self._random = random if random is not None else _random.Random()
        self._current = 0
        self._token: str | None = None
        self._authWaiters: list[Deferred[str]] = []
        self._watches: set[Watch] = set()
        self._pool = quietPool(reactor, 4)
        agentArgs: dict[str, Any] = {"pool": self._pool, "connectTimeout": timeout}
        if tls is not None:
            try:
                agentArgs["contextFactory"] = _tlsPolicy(tls)
            except OSError as e:
                raise ValueError(
                    "etcd TLS: cannot read %s: %s" % (e.filename, e.strerror)
                ) from None
            except Exception as e:
                # pyOpenSSL's errors on a file that is not PEM.
                raise ValueError("etcd TLS: %s" % (e,)) from None
        self._agent = Agent(reactor, **agentArgs)
        self._http = HTTPClient(self._agent)

    def __repr__(self) -> str:
        return "<EtcdClient %s>" % (", ".join(self.endpoints),)

    @property
    def endpoint(self) -> str:
        """
        The endpoint requests go to now.
        """
        return self.endpoints[self._current]

    def backoff(self) -> Backoff:
        """
        A new jittered backoff from 100 ms to 1 s, for those who retry.
        """
        return Backoff(BACKOFF_MIN, BACKOFF_MAX, random=self._random)

    def _failed(self, url: str) -> None:
        """
        C{url} could not be reached: the next requests go to the next
        endpoint (unless another request moved on already).
        """
        if self.endpoints[self._current] == url:
            self._current = (self._current + 1) % len(self.endpoints)

    # -- requests ---------------------------------------------------------

    def _post(
        self, url: str, path: str, body: dict, token: str | None, limit: int
    ) -> Deferred[tuple[int, Any]]:
        """
        One POST to one endpoint: C{(status, decoded JSON)}, within the
        timeout.
        """
        headers = Headers({b"Content-Type": [b"application/json"]})
        if token is not None:
            headers.setRawHeaders(b"Authorization", [token.encode("utf-8")])

        timedOut: list[bool] = []

        async def post() -> tuple[int, Any]:
            try:
                response = await self._http.post(
                    url + path,
                    data=json.dumps(body).encode("utf-8"),
                    headers=headers,
                    unbuffered=True,
                    allow_redirects=False,
                    reactor=self._reactor,
                )
                data = await _readBody(response, limit)
            except Exception:
                # Cancelled by the timer below, or by the caller: each says
                # so plainly (treq wraps a cancellation in ResponseFailed).
                if timedOut:
                    raise TimeoutError("no answer within %g s" % (self.timeout,)) from None
                if _wasCancelled(Failure()):
                    raise CancelledError() from None
                raise
            try:
                return response.code, json.loads(data)
            except (ValueError, RecursionError):
                raise EtcdError(
                    "etcd answered HTTP %d without JSON" % (response.code,)
                ) from None

        d = Deferred.fromCoroutine(post())

        def timeOut() -> None:
            timedOut.append(True)
            d.cancel()

        timer = self._reactor.callLater(self.timeout, timeOut)

        def done(result: object) -> object:
            if timer.active():
                timer.cancel()
            return result

        d.addBoth(done)
        return d

    async def _call(
        self, path: str, body: dict, *, idempotent: bool = True, limit: int | None = None
    ) -> dict[str, Any]:
        """
        A request to etcd, on each endpoint in turn until one answers.

        @return: the answer.
        @raise EtcdUnavailable: no endpoint answered.
        @raise EtcdError: etcd answered with an error.
        """
        limit = self.maxResponseBytes if limit is None else limit
        # Each endpoint once, plus one more try (a pooled connection that
        # the server had closed).
        tries = len(self.endpoints) + 1
        renewed = False
        lastReason = "no endpoint"
        while tries > 0:
            tries -= 1
            url = self.endpoint
            try:
                token = await self._ensureToken(url)
                status, answer = await self._post(url, path, body, token, limit)
            except EtcdUnavailable as e:
                lastReason = str(e)
                continue
            except CancelledError:
                # The caller gave up (a timeout here is a TimeoutError).
                raise
            except Exception:
                failure = Failure()
                if _isTransportFailure(failure, sent=idempotent):
                    lastReason = "%s: %s" % (url, _reason(failure))
                    self._failed(url)
                    continue
                self.errors += 1
                if isinstance(failure.value, EtcdError):
                    raise failure.value from None
                raise EtcdError("%s: %s" % (url, _reason(failure))) from None
            error = _errorOf(answer, status)
            if error is None:
                if not isinstance(answer, dict):
                    self.errors += 1
                    raise EtcdError("%s answered %s, not an object" % (url, type(answer).__name__))
                return answer
            if error.code == UNAUTHENTICATED and self._username is not None and not renewed:
                # The token expired (or etcd restarted): a new one, once.
                renewed = True
                self._dropToken(token)
                tries += 1
                continue
            if error.code == UNAVAILABLE:
                lastReason = "%s: %s" % (url, error)
                self._failed(url)
                continue
            self.errors += 1
            raise error
        self.errors += 1
        raise EtcdUnavailable("etcd unreachable (%s)" % (lastReason,))

    def _run(self, coroutine: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(coroutine)

    # -- authentication ---------------------------------------------------

    async def _ensureToken(self, url: str) -> str | None:
        """
        The token to send, asking etcd for one if there is none yet (one
        request at a time: concurrent callers wait for the same answer).
        """
        if self._username is None:
            return None
        if self._token is not None:
            return self._token
        waiting: Deferred[str] = Deferred()
        self._authWaiters.append(waiting)
        if len(self._authWaiters) == 1:
            Deferred.fromCoroutine(self._authenticate(url)).addBoth(self._authenticated)
        return await waiting

    def _authenticated(self, result: str | Failure) -> None:
        waiters, self._authWaiters = self._authWaiters, []
        for waiting in waiters:
            if isinstance(result, Failure):
                waiting.errback(result)
            else:
                waiting.callback(result)

    async def _authenticate(self, url: str) -> str:
        body = {"name": self._username, "password": self._password}
        try:
            status, answer = await self._post(url, "/v3/auth/authenticate", body, None, 65536)
        except CancelledError:
            raise
        except Exception:
            failure = Failure()
            if _isTransportFailure(failure, sent=True):
                self._failed(url)
                raise EtcdUnavailable("%s: %s" % (url, _reason(failure))) from None
            raise EtcdError("%s: authentication failed: %s" % (url, _reason(failure))) from None
        error = _errorOf(answer, status)
        if error is not None:
            raise EtcdError("authentication as %r failed: %s" % (self._username, error), error.code)
        token = answer.get("token") if isinstance(answer, dict) else None
        if not isinstance(token, str) or not token:
            raise EtcdError("etcd gave no token (is authentication enabled?)")
        self._token = token
        return token

    def _dropToken(self, token: str | None) -> None:
        """
        etcd refused C{token}: ask for a new one at the next request.
        """
        if token is not None and self._token == token:
            self._token = None

    # -- keys ---------------------------------------------------------------

    def range(
        self, key: str | bytes, *, prefix: bool = True, revision: int | None = None
    ) -> Deferred[tuple[int, list[KeyValue]]]:
        """
        Read a key, or every key under a prefix.

        @param key: the key, or the prefix.
        @param prefix: whether C{key} is a prefix (the default).
        @param revision: read the store as it was at this revision (fails
            with code 11 if it was compacted), or L{None} for now.
        @return: C{(revision, keyValues)}: the store's revision at the time
            of the read, and the keys in key order.
        """
        keyBytes = _keyBytes(key)
        body: dict[str, Any] = {"key": _b64(keyBytes)}
        if prefix:
            body["range_end"] = _b64(prefixEnd(keyBytes))
        if revision:
            body["revision"] = str(revision)

        async def read() -> tuple[int, list[KeyValue]]:
            answer = await self._call("/v3/kv/range", body)
            kvs = answer.get("kvs") or []
            if not isinstance(kvs, list):
                raise EtcdError("etcd's range answer has no list of keys")
            return _revision(answer), [_keyValue(kv) for kv in kvs]

        return self._run(read())

    def count(self, key: str | bytes, *, prefix: bool = True) -> Deferred[tuple[int, int]]:
        """
        Count the keys under a prefix, without reading them: a cheap way to
        check that etcd answers.

        @return: C{(revision, count)}.
        """
        keyBytes = _keyBytes(key)
        body: dict[str, Any] = {"key": _b64(keyBytes), "count_only": True}
        if prefix:
            body["range_end"] = _b64(prefixEnd(keyBytes))

        async def count() -> tuple[int, int]:
            answer = await self._call("/v3/kv/range", body, limit=65536)
            return _revision(answer), _int(answer.get("count"))

        return self._run(count())

    def get(self, key: str | bytes) -> Deferred[KeyValue | None]:
        """
        Read one key.

        @return: the L{KeyValue}, or L{None} when there is no such key.
        """

        async def get() -> KeyValue | None:
            _, found = await self.range(key, prefix=False)
            return found[0] if found else None

        return self._run(get())

    def put(self, key: str | bytes, value: bytes, lease: int | None = None) -> Deferred[int]:
        """
        Write a key.

        @param lease: the lease to attach it to (it is deleted when the
            lease expires), or L{None}.
        @return: the revision of the write.
        """
        body: dict[str, Any] = {"key": _b64(_keyBytes(key)), "value": _b64(value)}
        if lease:
            body["lease"] = str(lease)

        async def write() -> int:
            return _revision(await self._call("/v3/kv/put", body))

        return self._run(write())

    def delete(self, key: str | bytes, *, prefix: bool = False) -> Deferred[tuple[int, int]]:
        """
        Delete a key, or every key under a prefix.

        @return: C{(revision, deleted)}: the store's revision after it, and
            how many keys were deleted.
        """
        keyBytes = _keyBytes(key)
        body: dict[str, Any] = {"key": _b64(keyBytes)}
        if prefix:
            body["range_end"] = _b64(prefixEnd(keyBytes))

        async def delete() -> tuple[int, int]:
            answer = await self._call("/v3/kv/deleterange", body)
            return _revision(answer), _int(answer.get("deleted"))

        return self._run(delete())

    def compact(self, revision: int) -> Deferred[int]:
        """
        Compact the store's history up to C{revision} (watches from an
        earlier revision then fail); for operators and tests.

        @return: the store's revision.
        """

        async def compact() -> int:
            return _revision(await self._call("/v3/kv/compaction", {"revision": str(revision)}))

        return self._run(compact())

    def txn(
        self,
        compares: Iterable[dict],
        success: Iterable[dict],
        failure: Iterable[dict] = (),
    ) -> Deferred[tuple[bool, int, list[dict]]]:
        """
        A transaction: if every comparison holds, the C{success} operations,
        else the C{failure} ones, atomically.

        @param compares: built with L{compare}.
        @param success: operations built with L{opPut}, L{opRange},
            L{opDelete}.
        @param failure: the same.
        @return: C{(succeeded, revision, responses)}: which branch ran, the
            store's revision after it, and the answer of each operation as
            the gateway gives it (C{{"response_range": {"kvs": [...]}}}...).
        """
        body = {"compare": list(compares), "success": list(success), "failure": list(failure)}

        async def txn() -> tuple[bool, int, list[dict]]:
            answer = await self._call("/v3/kv/txn", body, idempotent=False)
            responses = answer.get("responses") or []
            if not isinstance(responses, list):
                raise EtcdError("etcd's txn answer has no list of responses")
            return bool(answer.get("succeeded")), _revision(answer), responses

        return self._run(txn())

    def createIfAbsent(self, key: str | bytes, value: bytes) -> Deferred[tuple[bool, int]]:
        """
        Write a key only if it does not exist.

        @return: C{(created, revision)}: whether it was written, and the
            key's C{mod_revision} (the new one if written, the existing
            key's otherwise).
        """

        async def create() -> tuple[bool, int]:
            succeeded, revision, responses = await self.txn(
                [compare(key, "CREATE", 0)], [opPut(key, value)], [opRange(key)]
            )
            if succeeded:
                return True, revision
            current = _rangeResult(responses)
            return False, current.modRevision if current is not None else 0

        return self._run(create())

    def compareAndSwap(
        self, key: str | bytes, value: bytes, modRevision: int
    ) -> Deferred[tuple[bool, int, KeyValue | None]]:
        """
        Write a key only if its last change is at C{modRevision}.

        @param modRevision: the C{mod_revision} the writer last read; 0 for
            a key that must not exist.
        @return: C{(ok, newModRevision, current)}: whether it was written;
            the key's C{mod_revision} now (0 if it does not exist); the key
            as it is now (L{None} if it does not exist).
        """

        async def swap() -> tuple[bool, int, KeyValue | None]:
            target = "CREATE" if modRevision == 0 else "MOD"
            succeeded, revision, responses = await self.txn(
                [compare(key, target, modRevision)], [opPut(key, value)], [opRange(key)]
            )
            if succeeded:
                name = _keyBytes(key).decode("utf-8", "surrogateescape")
                return True, revision, KeyValue(name, value, revision)
            current = _rangeResult(responses)
            return False, current.modRevision if current is not None else 0, current

        return self._run(swap())

    # -- leases -------------------------------------------------------------

    def leaseGrant(self, ttl: int) -> Deferred[tuple[int, int]]:
        """
        Ask for a lease.

        @param ttl: its time to live, in whole seconds (etcd may raise it
            to its minimum).
        @return: C{(leaseID, ttl)} as granted.
        """

        async def grant() -> tuple[int, int]:
            answer = await self._call("/v3/lease/grant", {"TTL": str(ttl)}, idempotent=False)
            lease = _int(answer.get("ID"))
            if not lease:
                raise EtcdError("etcd granted no lease: %s" % (answer.get("error") or "no ID",))
            return lease, _int(answer.get("TTL"))

        return self._run(grant())

    def leaseKeepAlive(self, lease: int) -> Deferred[int]:
        """
        Renew a lease once.

        @return: its time to live now, in seconds; 0 when the lease is gone
            (expired or revoked: its keys are deleted).
        """

        async def renew() -> int:
            answer = await self._call(
                "/v3/lease/keepalive", {"ID": str(lease)}, limit=65536
            )
            # A stream of one message: {"result": {...}} or {"error": ...}.
            error = _errorOf(answer)
            if error is None and isinstance(answer.get("error"), dict):
                error = EtcdError("etcd: %s" % (answer["error"].get("message"),))
            if error is not None:
                raise error
            result = answer.get("result")
            if not isinstance(result, dict):
                raise EtcdError("etcd's keep-alive answer has no result")
            return _int(result.get("TTL"))

        return self._run(renew())

    def leaseRevoke(self, lease: int) -> Deferred[bool]:
        """
        Revoke a lease: its keys are deleted at once.

        @return: C{True}, or C{False} if the lease was already gone.
        """

        async def revoke() -> bool:
            try:
                await self._call("/v3/lease/revoke", {"ID": str(lease)})
            except EtcdError as e:
                if e.code == NOT_FOUND:
                    return False
                raise
            return True

        return self._run(revoke())

    # -- watches ------------------------------------------------------------

    def watch(
        self,
        key: str | bytes,
        startRevision: int,
        onEvents: Callable[[list[WatchEvent], int], object],
        onCompacted: Callable[[int], object],
        *,
        prefix: bool = True,
        onStatus: Callable[[bool, str | None], object] | None = None,
    ) -> Watch:
        """
        Follow a key or a prefix from a revision: see L{Watch}.

        @param startRevision: the first revision whose changes are wanted
            (the revision of a read plus one).
        @param onEvents: called with the changes of one or more revisions,
            in order, and the revision the watch has then seen up to.
        @param onCompacted: called once, with the revision etcd compacted up
            to, when the changes from the watch's revision are gone (or with
            0 when the store went back in time: another cluster, or restored
            from a backup). The watch has stopped: read again and watch
            anew.
        @param onStatus: called with C{(True, None)} each time the watch is
            (again) established, and C{(False, reason)} each time it is lost.
        @return: the started L{Watch}; call its L{Watch.stop} when done.
        """
        keyBytes = _keyBytes(key)
        watch = Watch(
            self,
            keyBytes,
            prefixEnd(keyBytes) if prefix else None,
            startRevision,
            onEvents,
            onCompacted,
            onStatus,
        )
        self._watches.add(watch)
        watch.start()
        return watch

    def _openStream(
        self, url: str, path: str, body: dict, token: str | None
    ) -> Deferred[IResponse]:
        """
        Start a streamed POST: fires with the response once its head came.
        """
        headers = Headers({b"Content-Type": [b"application/json"]})
        if token is not None:
            headers.setRawHeaders(b"Authorization", [token.encode("utf-8")])
        d: Deferred[IResponse] = self._http.post(  # type: ignore[assignment]
            url + path,
            data=json.dumps(body).encode("utf-8"),
            headers=headers,
            unbuffered=True,
            allow_redirects=False,
            reactor=self._reactor,
        )
        d.addTimeout(self.timeout, self._reactor)
        return d

    def close(self) -> Deferred[None]:
        """
        Stop every watch and close the idle connections.

        @return: a L{Deferred} firing once they are closed.
        """
        for watch in list(self._watches):
            watch.stop()
        return self._pool.closeCachedConnections()


def _rangeResult(responses: list[dict]) -> KeyValue | None:
    """
    The key a transaction's C{opRange} read, or L{None}.
    """
    for response in responses:
        if isinstance(response, dict) and "response_range" in response:
            kvs = (response["response_range"] or {}).get("kvs") or []
            return _keyValue(kvs[0]) if kvs else None
    return None


class _Lines(Protocol):
    """
    Split a watch stream into lines, each at most C{limit} bytes.
    """

    def __init__(self, watch: Watch, limit: int) -> None:
        self._watch = watch
        self._limit = limit
        self._buffer = bytearray()
        self._closed = False

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._buffer += data
        while not self._closed:
            end = self._buffer.find(b"\n")
            if end == -1:
                break
            line = bytes(self._buffer[:end])
            del self._buffer[: end + 1]
            if line.strip():
                self._watch._line(self, line)
        if not self._closed and len(self._buffer) > self._limit:
            self._buffer = bytearray()
            self._watch._streamError(
                self, "a watch message is larger than %d bytes" % (self._limit,)
            )

    def abort(self) -> None:
        """
        Stop reading and drop the connection.
        """
        if not self._closed:
            self._closed = True
            self._buffer = bytearray()
            self.transport.stopProducing()  # type: ignore[union-attr]

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self._closed:
            return
        self._closed = True
        self._buffer = bytearray()
        if reason.check(ResponseDone, PotentialDataLoss):
            why = "etcd ended the watch stream"
        else:
            why = "watch connection lost (%s)" % (_reason(reason),)
        self._watch._streamLost(self, why)


class Watch:
    """
    One watch of a key or prefix: a long-lived C{POST /v3/watch} whose
    answer streams one JSON message per line.

    When the stream is lost (etcd restarted, the connection dropped, an
    endpoint unreachable), the watch connects again after a jittered
    backoff from 100 ms to 1 s, on the next endpoint, from the revision
    after the last one it saw: no change is missed or repeated. It stops
    for good when L{stop} is called, or when etcd says its revision was
    compacted (C{onCompacted}).

    @ivar revision: the first revision whose changes have not been seen.
    @ivar connected: whether the stream is established now.
    @ivar reconnects: how many times the stream was lost.
    @ivar lastError: why the stream was last lost, or L{None}.
    """

    def __init__(
        self,
        client: EtcdClient,
        key: bytes,
        rangeEnd: bytes | None,
        startRevision: int,
        onEvents: Callable[[list[WatchEvent], int], object],
        onCompacted: Callable[[int], object],
        onStatus: Callable[[bool, str | None], object] | None,
    ) -> None:
        self.revision = startRevision
        self.connected = False
        self.reconnects = 0
        self.lastError: str | None = None
        self._client = client
        self._key = key
        self._rangeEnd = rangeEnd
        self._onEvents = onEvents
        self._onCompacted = onCompacted
        self._onStatus = onStatus
        self._backoff = client.backoff()
        self._attempt = 0
        self._stopped = False
        self._lines: _Lines | None = None
        self._opening: Deferred[Any] | None = None
        self._retry: IDelayedCall | None = None
        self._url: str | None = None

    def __repr__(self) -> str:
        return "<Watch %r from %d%s>" % (
            self._key, self.revision, " connected" if self.connected else "",
        )

    def start(self) -> None:
        """
        Connect (called by L{EtcdClient.watch}).
        """
        self._connect()

    def stop(self) -> None:
        """
        Stop watching, for good: no callback is called after this.
        """
        if self._stopped:
            return
        self._stopped = True
        self.connected = False
        self._client._watches.discard(self)
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self._opening is not None:
            opening, self._opening = self._opening, None
            opening.cancel()
        if self._lines is not None:
            lines, self._lines = self._lines, None
            lines.abort()

    def reconnect(self, reason: str) -> None:
        """
        Drop the stream and connect again (from the same revision), as if
        it had been lost: for a stream that looks open but may be dead (a
        network partition sends no reset).
        """
        if self._lines is not None:
            self._streamError(self._lines, reason)

    def _connect(self) -> None:
        self._retry = None
        if self._stopped:
            return
        client = self._client
        url = self._url = client.endpoint
        create: dict[str, Any] = {
            "key": _b64(self._key),
            "start_revision": str(self.revision),
            # Big answers in pieces (each under the line bound), and
            # progress notices while nothing changes (the revision moves
            # on, so a watch resumed later is less likely to be compacted).
            "fragment": True,
            "progress_notify": True,
        }
        if self._rangeEnd is not None:
            create["range_end"] = _b64(self._rangeEnd)

        async def open() -> None:
            token = await client._ensureToken(url)
            response = await client._openStream(
                url, "/v3/watch", {"create_request": create}, token
            )
            if self._stopped:
                response.deliverBody(_Discard())
                return
            if response.code != 200:
                body = await _readBody(response, 65536)
                try:
                    answer = json.loads(body)
                except (ValueError, RecursionError):
                    answer = None
                raise _errorOf(answer, response.code) or EtcdError(
                    "etcd answered HTTP %d" % (response.code,)
                )
            lines = self._lines = _Lines(self, client.maxWatchLineBytes)
            response.deliverBody(lines)

        opening = self._opening = Deferred.fromCoroutine(open())

        def opened(_: object) -> None:
            if self._opening is opening:
                self._opening = None

        def failed(failure: Failure) -> None:
            if self._opening is opening:
                self._opening = None
            if self._stopped:
                return
            if _isTransportFailure(failure, sent=True) or failure.check(EtcdUnavailable):
                client._failed(url)
                self._lost("%s: %s" % (url, _reason(failure)))
            else:
                self._lost("%s: %s" % (url, _reason(failure)))

        opening.addCallbacks(opened, failed)

    # -- the stream ---------------------------------------------------------

    def _line(self, lines: _Lines, line: bytes) -> None:
        if lines is not self._lines or self._stopped:
            return
        try:
            message = json.loads(line)
        except (ValueError, RecursionError):
            self._streamError(lines, "a watch message is not JSON")
            return
        if not isinstance(message, dict):
            self._streamError(lines, "a watch message is not an object")
            return
        if "error" in message:
            error = message["error"]
            if isinstance(error, dict):
                text = error.get("message") or error.get("error") or "error"
                code = error.get("code")
            else:
                text, code = message.get("message") or error, message.get("code")
            if code == UNAUTHENTICATED:
                self._client._dropToken(self._client._token)
            self._streamError(lines, "etcd: %s" % (text,))
            return
        result = message.get("result")
        if not isinstance(result, dict):
            self._streamError(lines, "a watch message has no result")
            return
        try:
            self._result(lines, result)
        except EtcdError as e:
            self._streamError(lines, str(e))

    def _result(self, lines: _Lines, result: dict[str, Any]) -> None:
        compacted = _int(result.get("compact_revision"))
        if compacted:
            self._compacted(compacted)
            return
        if result.get("canceled"):
            reason = str(result.get("cancel_reason") or "etcd canceled the watch")
            if "auth token" in reason:
                # The token expired or etcd restarted: a new one next time.
                self._client._dropToken(self._client._token)
            self._streamError(lines, "etcd: " + reason)
            return
        header = result.get("header")
        headerRevision = _int(header.get("revision")) if isinstance(header, dict) else 0
        if result.get("created"):
            if headerRevision and headerRevision + 1 < self.revision:
                # The store is behind what this watch saw: another cluster,
                # or one restored from a backup. Only a new read is right.
                self._compacted(0)
                return
            self.connected = True
            self._attempt = 0
            self.lastError = None
            if self._onStatus is not None:
                self._onStatus(True, None)
            return
        rawEvents = result.get("events") or []
        if not isinstance(rawEvents, list):
            raise EtcdError("a watch message's events are not a list")
        events = []
        last = 0
        for raw in rawEvents:
            if not isinstance(raw, dict):
                raise EtcdError("a watch event is not an object")
            kv = _keyValue(raw.get("kv"))
            kind = "delete" if raw.get("type") == "DELETE" else "put"
            events.append(WatchEvent(kind, kv))
            last = max(last, kv.modRevision)
        if not result.get("fragment"):
            # A whole answer: every change up to its last revision (or, for
            # a progress notice without events, up to the header's) is in.
            seen = last if events else headerRevision
            if seen + 1 > self.revision:
                self.revision = seen + 1
        if events:
            self._onEvents(events, self.revision - 1)

    def _compacted(self, revision: int) -> None:
        self.stop()
        self._onCompacted(revision)

    def _streamError(self, lines: _Lines, reason: str) -> None:
        if lines is not self._lines:
            return
        self._lines = None
        lines.abort()
        self._lost("%s: %s" % (self._url, reason))

    def _streamLost(self, lines: _Lines, reason: str) -> None:
        if lines is not self._lines:
            return
        self._lines = None
        self._client._failed(self._url or "")
        self._lost("%s: %s" % (self._url, reason))

    def _lost(self, reason: str) -> None:
        if self._stopped:
            return
        self.connected = False
        self.lastError = reason
        self.reconnects += 1
        self._attempt += 1
        if self._onStatus is not None:
            self._onStatus(False, reason)
        delay = self._backoff.delay(self._attempt)
        self._retry = self._client._reactor.callLater(delay, self._connect)


class IPrefixListener(Interface):
    """
    What a L{PrefixFollower} tells the one who follows a key prefix.
    """

    def prefixRead(revision: int, kvs: list[KeyValue], first: bool) -> None:
        """
        A whole read of the prefix: what it holds at C{revision} replaces
        what was known. The watch from C{revision + 1} starts after this
        returns.

        @param first: whether this is the first read (not a read again
            after a compaction or a store that went back).
        """

    def prefixLoaded() -> None:
        """
        The first read was taken and its watch started (called once).
        """

    def prefixEvents(events: list[WatchEvent], revision: int) -> None:
        """
        The changes of one or more revisions, in order, up to C{revision}.
        """

    def prefixLost(reason: str) -> None:
        """
        etcd cannot be followed from now on (a read failed or the watch
        was lost): called once an outage, at its start; what was known
        stays in use. L{PrefixFollower.readOnce} says whether the prefix
        was ever read.
        """


class PrefixFollower:
    """
    Follow every key under one prefix of etcd: read the whole prefix, then
    watch it from the revision after that read.

    A read that fails is tried again (jittered backoff from 100 ms to 1 s);
    a lost watch resumes from the last revision it saw (see L{Watch});
    when etcd compacted that revision away, or went back in time (another
    cluster, a restore), the prefix is read again. While the watch looks
    established, etcd is asked for a count of the prefix every
    C{checkInterval} seconds: when it does not answer, the watch's
    connection may be dead without a reset (a partition), and it is
    dropped and tried again.

    Between a loss and the next read or established watch the follower is
    I{stale}: L{stale}, L{staleSeconds} and L{problem} say so, and the
    listener is told once per outage (L{IPrefixListener.prefixLost}).

    @ivar keyPrefix: the key prefix, ending with C{/}.
    @ivar backoff: the L{Backoff} of the read's retries (the user may
        share it for its own).
    @ivar revision: the etcd revision seen up to (0 before the first
        read).
    @ivar readOnce: whether the prefix was read once.
    @ivar watch: the L{Watch}, or L{None} while reading.
    @ivar problem: why etcd cannot be followed now, or L{None}.
    @ivar disconnects: how many times etcd was lost (a watch lost or a read
        failed while following).
    @ivar errors: how many reads failed.
    @ivar resyncs: how many times the prefix was read again after a
        compaction (or a store that went back).
    """

    def __init__(
        self,
        client: EtcdClient,
        keyPrefix: str,
        listener: IPrefixListener,
        *,
        reactor: Any,
        label: str,
        log: Logger,
        checkInterval: float = 10.0,
    ) -> None:
        """
        @param client: the L{EtcdClient} to read and watch with (its user
            closes it).
        @param keyPrefix: the key prefix; a C{/} is added if it does not
            end with one.
        @param listener: told what is read and seen.
        @param reactor: the clock of retries, checks and the stale age.
        @param label: who follows, at the start of the log lines
            (C{"namer /#/etcd"}).
        @param log: the L{Logger} to log with (the user's, so that the
            lines stay in its namespace).
        @param checkInterval: seconds between checks that etcd still
            answers while the watch looks established.
        """
        self.keyPrefix = keyPrefix if keyPrefix.endswith("/") else keyPrefix + "/"
        self.backoff = client.backoff()
        self.revision = 0
        self.readOnce = False
        self.watch: Watch | None = None
        self.problem: str | None = None
        self.disconnects = 0
        self.errors = 0
        self.resyncs = 0
        self._client = client
        self._listener = listener
        self._reactor = reactor
        self._label = label
        self._log = log
        self._checkInterval = checkInterval
        self._running = False
        self._reading: Deferred[Any] | None = None
        self._retry: Any = None
        self._attempt = 0
        self._staleSince: float | None = None
        self._checker: LoopingCall | None = None
        self._checking: Deferred[Any] | None = None

    def __repr__(self) -> str:
        return "<PrefixFollower %s%s at %d%s>" % (
            self._client.endpoint, self.keyPrefix, self.revision, " stale" if self.stale else "",
        )

    @property
    def stale(self) -> bool:
        """
        Whether etcd cannot be followed now.
        """
        return self._staleSince is not None

    @property
    def staleSeconds(self) -> float | None:
        """
        How long etcd has not been followed (to the millisecond), or
        L{None} while it is.
        """
        if self._staleSince is None:
            return None
        return round(self._reactor.seconds() - self._staleSince, 3)

    def start(self) -> None:
        """
        Read the prefix, then watch it; start the checks.
        """
        self._running = True
        self._read()
        checker = self._checker = LoopingCall(self._check)
        checker.clock = self._reactor
        checker.start(self._checkInterval, now=False)

    def stop(self) -> None:
        """
        Stop reading, watching and checking: nothing is told after this.
        """
        self._running = False
        if self._checker is not None and self._checker.running:
            self._checker.stop()
        self._checker = None
        # Forgotten before cancelled: their errbacks then do nothing.
        pending = [self._checking, self._reading]
        self._checking = self._reading = None
        for d in pending:
            if d is not None:
                d.cancel()
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        if self.watch is not None:
            self.watch.stop()
            self.watch = None

    def _read(self) -> None:
        self._retry = None
        if not self._running:
            return
        reading = self._reading = self._client.range(self.keyPrefix)

        def read(result: tuple[int, list[KeyValue]]) -> None:
            if self._reading is not reading:
                return
            self._reading = None
            self._attempt = 0
            self._loaded(*result)

        def failed(failure: Failure) -> None:
            if self._reading is not reading:
                return
            self._reading = None
            self.errors += 1
            self._lost(_reasonOf(failure))
            self._attempt += 1
            self._retry = self._reactor.callLater(self.backoff.delay(self._attempt), self._read)

        reading.addCallbacks(read, failed)

    def _loaded(self, revision: int, kvs: list[KeyValue]) -> None:
        """
        A whole read: the listener takes it, then the watch starts from
        the next revision.
        """
        first = not self.readOnce
        self.revision = revision
        self.readOnce = True
        self._back()
        self._listener.prefixRead(revision, kvs, first)
        if not self._running:
            return
        self.watch = self._client.watch(
            self.keyPrefix, revision + 1, self._events, self._compacted, onStatus=self._status
        )
        if first:
            self._listener.prefixLoaded()

    def _events(self, events: list[WatchEvent], revision: int) -> None:
        self._listener.prefixEvents(events, revision)
        self.revision = max(self.revision, revision)

    def _compacted(self, revision: int) -> None:
        self.watch = None
        self.resyncs += 1
        if revision:
            self._log.info(
                "{label}: etcd compacted its history up to revision {compacted}, past"
                " revision {revision}: reading {keyPrefix} again",
                label=self._label, compacted=revision, revision=self.revision,
                keyPrefix=self.keyPrefix,
            )
        else:
            self._log.warn(
                "{label}: etcd is behind revision {revision} (another cluster, or"
                " restored from a backup?): reading {keyPrefix} again",
                label=self._label, revision=self.revision, keyPrefix=self.keyPrefix,
            )
        self._read()

    def _check(self) -> None:
        """
        While the watch looks established, ask etcd something cheap: if it
        does not answer, drop the watch's connection, which makes the
        follower stale and the watch try again.
        """
        watch = self.watch
        if watch is None or not watch.connected or self._checking is not None:
            return
        checking = self._checking = self._client.count(self.keyPrefix)

        def answered(_: object) -> None:
            if self._checking is checking:
                self._checking = None

        def failed(failure: Failure) -> None:
            if self._checking is not checking:
                return
            self._checking = None
            if failure.check(EtcdUnavailable) and watch is self.watch and watch.connected:
                watch.reconnect("etcd does not answer (%s)" % (failure.value,))

        checking.addCallbacks(answered, failed)

    def _status(self, connected: bool, reason: str | None) -> None:
        if connected:
            self._back()
        else:
            self._lost(reason or "watch lost")

    def _lost(self, reason: str) -> None:
        """
        etcd cannot be followed now: the listener is told once per outage
        (the attempts that follow, on every endpoint, only update the
        reason shown).
        """
        self.problem = reason
        if self._staleSince is not None:
            return
        self._staleSince = self._reactor.seconds()
        self.disconnects += 1
        self._listener.prefixLost(reason)

    def _back(self) -> None:
        if self._staleSince is None:
            return
        downFor = self._reactor.seconds() - self._staleSince
        self._staleSince = None
        self.problem = None
        self._log.info(
            "{label}: following etcd again after {seconds:.1f} s (revision {revision})",
            label=self._label, seconds=downFor, revision=self.revision,
        )

    def state(self) -> dict[str, Any]:
        """
        The part of a follower's user's C{/admin/state} that is the
        follower's: C{{"endpoint", "keyPrefix", "stale", "staleSeconds",
        "problem", "revision", "disconnects", "errors", "resyncs"}}.
        """
        return {
            "endpoint": self._client.endpoint,
            "keyPrefix": self.keyPrefix,
            "stale": self.stale,
            "staleSeconds": self.staleSeconds,
            "problem": self.problem,
            "revision": self.revision,
            "disconnects": self.disconnects,
            "errors": self.errors,
            "resyncs": self.resyncs,
        }


class FollowsPrefix:
    """
    A mixin for the users of a L{PrefixFollower} (kept in C{_follower}):
    its counters and its state as the user's own read-only attributes.
    """

    _follower: PrefixFollower

    @property
    def revision(self) -> int:
        """
        The etcd revision seen up to (0 before the first read).
        """
        return self._follower.revision

    @property
    def disconnects(self) -> int:
        """
        How many times etcd was lost (a watch lost or a read failed while
        following).
        """
        return self._follower.disconnects

    @property
    def errors(self) -> int:
        """
        How many reads of the prefix failed.
        """
        return self._follower.errors

    @property
    def resyncs(self) -> int:
        """
        How many times the prefix was read again after a compaction.
        """
        return self._follower.resyncs

    @property
    def problem(self) -> str | None:
        """
        Why etcd cannot be followed now, or L{None}.
        """
        return self._follower.problem

    @property
    def stale(self) -> bool:
        """
        Whether etcd cannot be followed now (what is in force may be
        behind it).
        """
        return self._follower.stale


def _reasonOf(failure: Failure) -> str:
    """
    A failure in words: an L{EtcdError}'s message, else the exception's
    C{repr}.
    """
    return str(failure.value) if failure.check(EtcdError) else repr(failure.value)


class _Discard(Protocol):
    def connectionLost(self, reason: Failure = _DONE) -> None:
        pass

    def connectionMade(self) -> None:
        self.transport.stopProducing()  # type: ignore[union-attr]



def tlsProblem(config: Any) -> str | None:
    """
    Why the TLS files of a config section's etcd keys cannot be used, or
    L{None} when they can (or there are none): what L{clientFor} would
    raise, found before anything starts.
    """
    if config.tls is None:
        return None
    try:
        _tlsPolicy(TLSFiles(ca=config.tls.ca, cert=config.tls.cert, key=config.tls.key))
    except OSError as e:
        return "cannot read %s: %s" % (e.filename, e.strerror)
    except Exception as e:
        # pyOpenSSL's errors on a file that is not PEM, and ours.
        return str(e) or e.__class__.__name__
    return None


def clientFor(config: Any, *, reactor: Any) -> EtcdClient:
    """
    The client a config section's etcd keys describe (the C{etcd} namer's,
    a rules store's: C{endpoints}, C{username}, C{password}, C{tls} with
    C{ca}, C{cert}, C{key}, and C{timeout}).

    @raise ValueError: when the TLS files cannot be read.
    """
    tls = None
    if config.tls is not None:
        tls = TLSFiles(ca=config.tls.ca, cert=config.tls.cert, key=config.tls.key)
    return EtcdClient(
        config.endpoints,
        reactor=reactor,
        username=config.username,
        password=config.password,
        tls=tls,
        timeout=config.timeout,
    )
