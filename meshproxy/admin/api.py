"""
The admin HTTP API: health, Prometheus metrics, live state and the dashboard.

Served by C{makeService} as C{Site(AdminAPI(runtime, registry).app.resource())}
on the C{admin.listen} endpoint. Importing this module imports klein, which
installs the global reactor: only C{makeService} (or what it loads) may
import it.

What the API needs from its collaborators:

 - C{runtime.isReady() -> bool}: every listener bound and every namer has
   answered once.
 - C{runtime.waitingFor() -> list[str]}: what readiness still waits for,
   in words (C{["listener web", "namer /#/fs"]}).
 - C{runtime.routers}: a mapping of router name to router.
 - C{router.state() -> dict}: a JSON-ready description of the router. The
   dashboard reads this shape (missing keys show as blanks)::

       {"protocol": "http",
        "boundNames": {"/#/fs/users": {"endpoints": [
            {"address": "127.0.0.1:8081", "state": "live", "ewmaMs": 1.8,
             "pending": 0, "requests": 1200, "successRate": 0.998,
             "consecutiveFailures": 0}]}}}

Every JSON answer has C{Content-Type: application/json} and ends in a
newline, errors included (C{{"error": "not found"}}).
"""

from __future__ import annotations

import functools
import hmac
import json
from typing import Any, Callable

from klein import Klein
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import CollectorRegistry
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from werkzeug.exceptions import MethodNotAllowed, NotFound

_log = Logger()

# Methods that only read. With a token configured, everything else needs it;
# these need it only when protectReads is set.
_READ_METHODS = frozenset({b"GET", b"HEAD", b"OPTIONS"})


def _json(request: IRequest, body: Any, code: int = 200) -> bytes:
    """
    Set up C{request} for a JSON answer and return the encoded body.

    @param request: the request being answered.
    @param body: a JSON-serialisable value.
    @param code: the HTTP status.
    @return: the UTF-8 JSON text followed by a newline.
    """
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(body).encode("utf-8") + b"\n"


def _requireToken(handler: Callable[..., Any]) -> Callable[..., Any]:
    """
    Guard an L{AdminAPI} route handler with the bearer token.

    When the API has a token, a request whose method is not a read (GET,
    HEAD, OPTIONS) must carry C{Authorization: Bearer <token>}; reads must
    too when the API was built with C{protectReads=True}. Without a token,
    every request passes. A refused request gets 401
    C{{"error": "unauthorized"}} with C{WWW-Authenticate: Bearer}, and the
    handler is not called.

    Put it under C{@app.route}::

        @app.route("/admin/shutdown", methods=["POST"])
        @_requireToken
        def shutdown(self, request): ...

    @param handler: a method taking C{(self, request, **routeArguments)}.
    @return: the guarded method.
    """

    @functools.wraps(handler)
    def guarded(self: AdminAPI, request: IRequest, *args: Any, **kwargs: Any) -> Any:
        if not self._authorized(request):
            request.setHeader(b"www-authenticate", b"Bearer")
            return _json(request, {"error": "unauthorized"}, 401)
        return handler(self, request, *args, **kwargs)

    return guarded


class AdminAPI:
    """
    The admin API as a class-bound Klein app.

    Health probes (C{/live}, C{/ready}) and the dashboard page (C{/}) are
    never guarded by the token: probes from kubelet or systemd carry none,
    and the page holds no data (its script asks for the token when
    C{/admin/state} answers 401). C{/metrics} and C{/admin/state} are
    guarded when C{protectReads} is set; future mutating routes use
    L{_requireToken} and are guarded whenever a token is set.

    @param runtime: the running proxy; see the module docstring for what it
        must provide.
    @param registry: the C{CollectorRegistry} that C{/metrics} exports.
    @param token: the bearer token mutating calls need, or L{None} for no
        check. Must not be empty.
    @param protectReads: also require the token on reads of data.
    @raise ValueError: C{token} is empty, or C{protectReads} is set without
        a token.
    """

    app = Klein()

    def __init__(
        self,
        runtime: Any,
        registry: CollectorRegistry,
        *,
        token: str | None = None,
        protectReads: bool = False,
    ) -> None:
        if token is not None and not token:
            raise ValueError("admin token must not be empty (use None for no token)")
        if protectReads and token is None:
            raise ValueError("protectReads needs an admin token")
        self._runtime = runtime
        self._registry = registry
        self._token = None if token is None else token.encode("utf-8")
        self._protectReads = protectReads

    def _authorized(self, request: IRequest) -> bool:
        """
        Whether C{request} may go through L{_requireToken}.
        """
        if self._token is None:
            return True
        if request.method in _READ_METHODS and not self._protectReads:
            return True
        header = request.getHeader(b"authorization")
        if header is None:
            return False
        scheme, _, credentials = header.strip().partition(b" ")
        if scheme.lower() != b"bearer":
            return False
        # Constant-time, so response timing does not leak the token.
        return hmac.compare_digest(credentials.strip(), self._token)

    @app.route("/live", methods=["GET"])
    def live(self, request: IRequest) -> bytes:
        """
        Liveness: the process answers. Always 200 C{{"live": true}}.
        """
        return _json(request, {"live": True})

    @app.route("/ready", methods=["GET"])
    def ready(self, request: IRequest) -> bytes:
        """
        Readiness: 200 C{{"ready": true}} once C{runtime.isReady()}, else
        503 C{{"ready": false, "waiting": [...]}} listing what it waits for.
        """
        if self._runtime.isReady():
            return _json(request, {"ready": True})
        waiting = [str(what) for what in self._runtime.waitingFor()]
        return _json(request, {"ready": False, "waiting": waiting}, 503)

    @app.route("/metrics", methods=["GET"])
    @_requireToken
    def metrics(self, request: IRequest) -> bytes:
        """
        The registry in the Prometheus text exposition format.
        """
        body = generate_latest(self._registry)
        request.setHeader(b"content-type", CONTENT_TYPE_LATEST.encode("ascii"))
        request.setHeader(b"cache-control", b"no-store")
        return body

    @app.route("/admin/state", methods=["GET"])
    @_requireToken
    def state(self, request: IRequest) -> bytes:
        """
        Every router's C{state()}: C{{"routers": {name: state}}}.
        """
        routers = {
            name: router.state() for name, router in self._runtime.routers.items()
        }
        return _json(request, {"routers": routers})

    @app.route("/", methods=["GET"])
    def dashboard(self, request: IRequest) -> bytes:
        """
        The dashboard: a self-contained HTML page polling C{/admin/state}.
        """
        request.setHeader(b"content-type", b"text/html; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-content-type-options", b"nosniff")
        # The page loads nothing from anywhere and may only call back home;
        # the policy enforces that and blocks framing.
        request.setHeader(
            b"content-security-policy",
            b"default-src 'none'; script-src 'unsafe-inline'; "
            b"style-src 'unsafe-inline'; connect-src 'self'; "
            b"frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
        )
        return _DASHBOARD

    @app.handle_errors(NotFound)
    def _notFound(self, request: IRequest, failure: Failure) -> bytes:
        return _json(request, {"error": "not found"}, 404)

    @app.handle_errors(MethodNotAllowed)
    def _methodNotAllowed(self, request: IRequest, failure: Failure) -> bytes:
        allowed = sorted(failure.value.valid_methods or ())
        request.setHeader(b"allow", ", ".join(allowed).encode("ascii"))
        return _json(request, {"error": "method not allowed", "allowed": allowed}, 405)

    @app.handle_errors(Exception)
    def _internalError(self, request: IRequest, failure: Failure) -> bytes:
        _log.failure("admin API request {method} {uri} failed", failure,
                     method=request.method, uri=request.uri)
        return _json(request, {"error": "internal error"}, 500)


# Self-contained on purpose: no external scripts, styles or fonts, so the
# page works on an air-gapped host and the CSP above can forbid them all.
# Data is inserted with textContent only: names and addresses come from
# namers (files, etcd) and must never be parsed as HTML.
_DASHBOARD = b"""<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>meshproxy</title>
<style>
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.3em; margin: 0 0 .2em; }
h2 { font-size: 1.1em; margin: 1.5em 0 .4em; }
#status { color: #666; }
#status.bad { color: #b00; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25em .7em; border-bottom: 1px solid #ddd; }
th { background: #f4f4f4; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.live { color: #080; } .ejected { color: #b00; }
.probing, .draining { color: #a60; }
#auth { display: none; margin: 1em 0; }
</style>
</head>
<body>
<h1>meshproxy</h1>
<div id="status">loading&hellip;</div>
<div id="auth"><label>Admin token <input id="token" type="password"></label>
<button id="save">Use</button></div>
<div id="routers"></div>
<script>
"use strict";
const COLUMNS = ["bound name", "endpoint", "state", "EWMA ms", "pending",
                 "requests", "success rate"];

function el(tag, text, cls) {
  const e = document.createElement(tag);
  if (text !== undefined) e.textContent = text;
  if (cls) e.className = cls;
  return e;
}

function num(v, digits) {
  return typeof v === "number" ? v.toFixed(digits) : "";
}

function routerTable(name, router) {
  const section = el("section");
  section.appendChild(el("h2", name + (router.protocol ? " (" + router.protocol + ")" : "")));
  const table = el("table"), head = el("tr");
  COLUMNS.forEach(c => head.appendChild(el("th", c)));
  table.appendChild(head);
  const names = router.boundNames || {};
  Object.keys(names).sort().forEach(bound => {
    const b = names[bound];
    const endpoints = Array.isArray(b) ? b : (b && b.endpoints) || [];
    endpoints.forEach(ep => {
      const tr = el("tr");
      tr.appendChild(el("td", bound));
      tr.appendChild(el("td", ep.address || ""));
      tr.appendChild(el("td", ep.state || "", ep.state));
      tr.appendChild(el("td", num(ep.ewmaMs, 1), "num"));
      tr.appendChild(el("td", num(ep.pending, 0), "num"));
      tr.appendChild(el("td", num(ep.requests, 0), "num"));
      tr.appendChild(el("td", typeof ep.successRate === "number" ?
                        (100 * ep.successRate).toFixed(1) + " %" : "", "num"));
      table.appendChild(tr);
    });
  });
  section.appendChild(table);
  return section;
}

function show(text, bad) {
  const s = document.getElementById("status");
  s.textContent = text;
  s.className = bad ? "bad" : "";
}

async function refresh() {
  const headers = {};
  const token = sessionStorage.getItem("meshproxy-token");
  if (token) headers["Authorization"] = "Bearer " + token;
  try {
    const r = await fetch("admin/state", {headers: headers, cache: "no-store"});
    if (r.status === 401) {
      document.getElementById("auth").style.display = "block";
      show("this admin API needs a token", true);
      return;
    }
    if (!r.ok) { show("admin/state answered " + r.status, true); return; }
    const state = await r.json();
    const box = document.getElementById("routers");
    box.replaceChildren(...Object.keys(state.routers || {}).sort()
      .map(n => routerTable(n, state.routers[n])));
    show("updated " + new Date().toLocaleTimeString());
  } catch (e) {
    show("cannot reach the admin API: " + e, true);
  }
}

document.getElementById("save").addEventListener("click", () => {
  sessionStorage.setItem("meshproxy-token", document.getElementById("token").value);
  document.getElementById("auth").style.display = "none";
  refresh();
});
refresh();
setInterval(refresh, 2000);
</script>
</body>
</html>
"""
