"""
Headless Chromium for the browser tests, driven through the DevTools
protocol over a websocket (autobahn, on the reactor): no driver binary, no
browser download. Chromium is the system's (Debian's C{chromium}), run as a
child process with a new empty profile; it is closed, or killed, and waited
for at the end of the test.

Every wait here is bounded: Chromium that does not start, a page that does
not load or a condition never met fails the test with what was seen.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import os
import shutil
from typing import Any, Callable
from urllib.parse import urlsplit

from twisted.internet import defer, protocol, task
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionDone
from twisted.logger import Logger

_log = Logger()

#: The names the Chromium binary goes by on Linux distributions.
CHROMIUM_NAMES = ("chromium", "chromium-browser")

#: What Chromium is run with: headless, no sandbox (tests may run as root),
#: and nothing that would reach the network on its own.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--mute-audio",
    "--force-device-scale-factor=1",
    "--remote-debugging-port=0",
    "--remote-debugging-address=127.0.0.1",
)


def findChromium() -> str | None:
    """
    The path of the Chromium binary, or L{None} when none is installed.
    """
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path is not None:
            return path
    return None


def haveWebsocketClient() -> bool:
    """
    Whether autobahn (the websocket client these tests use) is installed.
    """
    return importlib.util.find_spec("autobahn") is not None


class DevToolsError(Exception):
    """
    A DevTools command answered with an error.
    """


class _BrowserProcess(protocol.ProcessProtocol):
    """
    Chromium's process: its output goes to a log file; C{ended} fires when
    it has exited.
    """

    def __init__(self, logPath: str) -> None:
        self.logPath = logPath
        self._log = open(logPath, "wb")
        self.ended: defer.Deferred[None] = defer.Deferred()
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self._log.write(data)

    def errReceived(self, data: bytes) -> None:
        self._log.write(data)

    def processEnded(self, reason: Any) -> None:
        self.running = False
        self._log.close()
        self.ended.callback(None)

    def tail(self, size: int = 2000) -> str:
        """
        The end of what the browser printed, for failure messages.
        """
        self._log.flush()
        with open(self.logPath, "rb") as f:
            return f.read()[-size:].decode("utf-8", "replace")


class DevTools:
    """
    One websocket to the browser's DevTools endpoint. Commands go to the
    browser, or to a page attached with flattened sessions (L{Page}).

    @ivar events: every event received, in order (C{{"method", "params",
        "sessionId"}}).
    """

    def __init__(self) -> None:
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[str, defer.Deferred[Any]]] = {}
        self._protocol: Any = None
        self.events: list[dict[str, Any]] = []
        self.opened: defer.Deferred[None] = defer.Deferred()
        self.closed: defer.Deferred[None] = defer.Deferred()

    def send(self, method: str, params: dict[str, Any] | None = None,
             sessionId: str | None = None) -> defer.Deferred[Any]:
        """
        Send one command.

        @return: a Deferred firing with its C{result}, or failing with
            L{DevToolsError} (or C{ConnectionDone} if the socket closes).
        """
        if self._protocol is None:
            return defer.fail(ConnectionDone("DevTools socket closed"))
        ident = next(self._ids)
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if sessionId is not None:
            message["sessionId"] = sessionId
        d: defer.Deferred[Any] = defer.Deferred()
        self._waiting[ident] = (method, d)
        self._protocol.sendMessage(json.dumps(message).encode("utf-8"))
        return d

    def _opened(self, proto: Any) -> None:
        self._protocol = proto
        self.opened.callback(None)

    def _received(self, message: dict[str, Any]) -> None:
        if "id" in message:
            method, d = self._waiting.pop(message["id"], (None, None))
            if d is None:
                return
            if "error" in message:
                d.errback(DevToolsError(method, message["error"]))
            else:
                d.callback(message.get("result", {}))
        else:
            self.events.append(message)

    def _closed(self) -> None:
        self._protocol = None
        waiting, self._waiting = self._waiting, {}
        for method, d in waiting.values():
            d.errback(ConnectionDone(f"DevTools socket closed during {method}"))
        if not self.opened.called:
            self.opened.errback(ConnectionDone("DevTools socket closed before opening"))
        if not self.closed.called:
            self.closed.callback(None)

    def abort(self) -> None:
        """
        Drop the connection now.
        """
        if self._protocol is not None:
            self._protocol.transport.abortConnection()


def _protocolClass() -> type:
    from autobahn.twisted.websocket import WebSocketClientProtocol

    class _DevToolsProtocol(WebSocketClientProtocol):
        def onOpen(self) -> None:
            self.factory.devtools._opened(self)

        def onMessage(self, payload: bytes, isBinary: bool) -> None:
            self.factory.devtools._received(json.loads(payload.decode("utf-8")))

        def onClose(self, wasClean: bool, code: Any, reason: Any) -> None:
            self.factory.devtools._closed()

    return _DevToolsProtocol


@defer.inlineCallbacks
def connectDevTools(reactor: Any, url: str) -> Any:
    """
    Open a websocket to C{url} (C{ws://127.0.0.1:port/devtools/browser/…}).

    @return: a Deferred firing with a L{DevTools} once the socket is open.
    """
    from autobahn.twisted.websocket import WebSocketClientFactory

    parts = urlsplit(url)
    devtools = DevTools()
    # No Origin header: Chromium refuses DevTools sockets opened by pages.
    factory = WebSocketClientFactory(url)
    factory.protocol = _protocolClass()
    factory.devtools = devtools
    # Screenshots are sent whole in one message.
    factory.setProtocolOptions(maxMessagePayloadSize=0, maxFramePayloadSize=0)
    endpoint = TCP4ClientEndpoint(reactor, parts.hostname, parts.port, timeout=10)
    yield endpoint.connect(factory)
    yield devtools.opened
    return devtools


class Page:
    """
    A page (tab) of the browser, attached over the browser's socket.

    @ivar sessionId: the DevTools session of the page.
    """

    def __init__(self, devtools: DevTools, sessionId: str) -> None:
        self.devtools = devtools
        self.sessionId = sessionId

    def send(self, method: str, params: dict[str, Any] | None = None) -> defer.Deferred[Any]:
        """
        Send one command to the page.
        """
        return self.devtools.send(method, params, self.sessionId)

    def events(self, *methods: str) -> list[dict[str, Any]]:
        """
        The parameters of the page's events so far of the given kinds.
        """
        return [
            event["params"] for event in self.devtools.events
            if event.get("sessionId") == self.sessionId and event["method"] in methods
        ]

    @defer.inlineCallbacks
    def evaluate(self, expression: str) -> Any:
        """
        Evaluate a JavaScript expression in the page (awaiting a promise it
        returns) and return its value, as JSON would carry it.

        @raise DevToolsError: the expression threw.
        """
        result = yield self.send("Runtime.evaluate", {
            "expression": expression, "returnByValue": True, "awaitPromise": True,
        })
        if "exceptionDetails" in result:
            details = result["exceptionDetails"]
            raise DevToolsError(
                "evaluate", details.get("exception", {}).get("description") or details
            )
        return result["result"].get("value")

    @defer.inlineCallbacks
    def navigate(self, reactor: Any, url: str, timeout: float) -> Any:
        """
        Load C{url} in the page and wait until its load event.

        @raise AssertionError: the navigation failed or took longer than
            C{timeout} seconds.
        """
        answer = yield self.send("Page.navigate", {"url": url})
        if "errorText" in answer:
            raise AssertionError(f"cannot load {url}: {answer['errorText']}")
        yield self.waitFor(
            reactor,
            f"location.href === {json.dumps(url)} && document.readyState === 'complete'",
            timeout,
        )

    @defer.inlineCallbacks
    def waitFor(self, reactor: Any, expression: str, timeout: float,
                describe: Callable[[], Any] | None = None) -> Any:
        """
        Evaluate C{expression} every 100 ms until it gives a true value.

        @param timeout: seconds, after which the test fails with the last
            value and C{describe()}.
        @return: a Deferred firing with that true value.
        """
        deadline = reactor.seconds() + timeout
        value = None
        while True:
            value = yield self.evaluate(expression)
            if value:
                return value
            if reactor.seconds() > deadline:
                seen = None
                if describe is not None:
                    seen = yield describe()
                raise AssertionError(
                    f"waited {timeout} s for {expression!r}: last value {value!r}; "
                    f"page shows {seen!r}"
                )
            yield task.deferLater(reactor, 0.1, lambda: None)


class Chromium:
    """
    A headless Chromium run by a test.

    Use L{launch}; it is closed and waited for in the test's cleanup.

    @ivar devtools: the browser's L{DevTools} socket.
    @ivar logPath: where its output goes.
    """

    def __init__(self, reactor: Any, process: _BrowserProcess, transport: Any) -> None:
        self._reactor = reactor
        self._process = process
        self._transport = transport
        self.devtools: DevTools | None = None
        self.logPath = process.logPath

    @classmethod
    @defer.inlineCallbacks
    def launch(cls, testCase: Any, executable: str, *, reactor: Any,
               width: int = 1280, height: int = 900, timeout: float = 30) -> Any:
        """
        Start Chromium with a new empty profile in the test's temporary
        directory, and connect to its DevTools endpoint, whose port it
        writes to C{DevToolsActivePort} in the profile.

        @param testCase: the test, for its temporary directory and cleanup.
        @return: a Deferred firing with the L{Chromium}.
        """
        base = os.path.abspath(testCase.mktemp())
        profile = os.path.join(base, "profile")
        home = os.path.join(base, "home")
        os.makedirs(profile)
        os.makedirs(home)
        args = [executable, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                f"--window-size={width},{height}", "about:blank"]
        # Its own HOME too, so that nothing is left in the real one.
        env = dict(os.environ, HOME=home, XDG_CONFIG_HOME=os.path.join(home, ".config"),
                   XDG_CACHE_HOME=os.path.join(home, ".cache"))
        process = _BrowserProcess(os.path.join(base, "chromium.log"))
        transport = reactor.spawnProcess(process, executable, args, env=env, path=base)
        browser = cls(reactor, process, transport)
        testCase.addCleanup(browser.close)
        _log.info("chromium {pid} started, output in {log}", pid=transport.pid, log=browser.logPath)

        portFile = os.path.join(profile, "DevToolsActivePort")
        deadline = reactor.seconds() + timeout
        while True:
            lines = []
            if os.path.exists(portFile):
                with open(portFile) as f:
                    lines = f.read().split("\n")
            if len(lines) >= 2 and lines[0].strip().isdigit() and lines[1].startswith("/"):
                break
            if not process.running:
                raise AssertionError(f"chromium exited before listening:\n{process.tail()}")
            if reactor.seconds() > deadline:
                raise AssertionError(
                    f"chromium did not write {portFile} in {timeout} s:\n{process.tail()}"
                )
            yield task.deferLater(reactor, 0.05, lambda: None)
        url = f"ws://127.0.0.1:{int(lines[0])}{lines[1].strip()}"
        connecting = connectDevTools(reactor, url)
        connecting.addTimeout(timeout, reactor)
        browser.devtools = yield connecting
        return browser

    @defer.inlineCallbacks
    def newPage(self) -> Any:
        """
        Open a new blank tab and attach to it.

        @return: a Deferred firing with its L{Page}.
        """
        target = yield self.devtools.send("Target.createTarget", {"url": "about:blank"})
        attached = yield self.devtools.send(
            "Target.attachToTarget", {"targetId": target["targetId"], "flatten": True}
        )
        return Page(self.devtools, attached["sessionId"])

    @defer.inlineCallbacks
    def close(self) -> Any:
        """
        Ask the browser to close, kill it if it has not exited within 5
        seconds, and wait for its end and for its socket to close.
        """
        process = self._process
        devtools = self.devtools
        if process.running and devtools is not None and devtools._protocol is not None:
            closing = devtools.send("Browser.close")
            closing.addTimeout(3, self._reactor)
            try:
                yield closing
            except Exception:
                pass
        if process.running:
            ended = process.ended
            waiting: defer.Deferred[None] = defer.Deferred()
            ended.addBoth(lambda r: (waiting.called or waiting.callback(None), r)[1])
            waiting.addTimeout(5, self._reactor)
            try:
                yield waiting
            except defer.TimeoutError:
                if process.running:
                    _log.warn("chromium did not exit, killing it")
                    self._transport.signalProcess("KILL")
        if process.running:
            yield process.ended
        if devtools is not None and not devtools.closed.called:
            devtools.abort()
            yield devtools.closed
