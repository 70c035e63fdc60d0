#!/usr/bin/env python3
"""
Throughput and latency benchmark of meshproxy against HAProxy and direct nginx.

One invocation starts, all on 127.0.0.1 and on free ports:

  - nginx (C{nginx-light}, one worker) answering C{200 "hello\\n"}: the backend;
  - HAProxy 2.x in http mode (C{nbthread 1}, C{http-reuse always}) in front of it;
  - meshproxy under twistd, routing C{Host: hello} to it through a static namer;

then drives each target with wrk, interleaving the targets inside every run
(run 1: direct, haproxy, meshproxy; run 2: ...) so that machine noise is shared
out, and reports medians and the ratios meshproxy/direct and meshproxy/haproxy
measured in this one invocation. Absolute figures depend on the machine; the
ratios are what to quote (see bench/README.md).

With C{--tls}, TLS targets join the same runs, each meshproxy beside an HAProxy
doing the same job with the same certificate (made by C{meshproxy.certs} in
the temp dir, with the interpreter that runs meshproxy):

  - C{haproxy-tls}, C{meshproxy-tls}: TLS terminated on keep-alive connections
    (HAProxy C{bind ... ssl crt}, meshproxy's C{tls:} section), plain to nginx;
  - C{haproxy-tls-hs}, C{meshproxy-tls-hs}: the same servers, driven by wrk
    with C{Connection: close}: a new connection and TLS handshake per
    request, which wrk resumes (it keeps each connection's TLS session);
  - C{haproxy-tls-full}, C{meshproxy-tls-full}: the same servers, driven by
    parallel C{openssl s_time -new} loops: connect, a full TLS handshake (no
    session resumed), close; no HTTP request;
  - C{haproxy-mtls}, C{meshproxy-mtls}: a pair, an outbound proxy originating
    mutual TLS (client certificate, server certificate verified) to an inbound
    one terminating it (client certificate required, the caller checked) in
    front of nginx; wrk speaks plain HTTP to the outbound one.

With C{--h2}, HTTP/2 targets join the same runs, driven by h2load (HTTP/2
with prior knowledge, h2c) instead of wrk:

  - C{haproxy-h2}, C{meshproxy-h2}: HAProxy with an h2 frontend (C{bind ...
    proto h2}) and meshproxy's HTTP listener (which takes h2c beside
    HTTP/1.1), both to nginx over HTTP/1.1, one stream at a time per
    connection (C{h2load -m 1}, C{--connections} connections);
  - C{haproxy-h2-m100}, C{meshproxy-h2-m100}: the same servers with 100
    concurrent streams per connection (C{h2load -m 100},
    C{--h2-connections} connections).

With C{--h2up}, HTTP/2 to upstreams: h2load (h2c) in front, and nginx
serving h2c (C{listen ... http2}) behind, HTTP/2 end to end:

  - C{direct-h2up}, C{haproxy-h2up}, C{meshproxy-h2up}: nginx's h2c server
    directly, HAProxy (h2 frontend, C{proto h2} server) and meshproxy
    (C{client: {upstreamProtocol: h2}}) in front of it, one stream at a time
    per connection (C{h2load -m 1}, C{--connections} connections);
  - C{direct-h2up-m100}, C{haproxy-h2up-m100}, C{meshproxy-h2up-m100}: the
    same with 100 concurrent streams per connection (C{--h2-connections}).

With C{--l4}, layer-4 targets join the same runs, each meshproxy TCP router
beside an HAProxy in C{mode tcp} doing the same job:

  - C{haproxy-l4-big1}, C{meshproxy-l4-big1}: large transfers, one stream
    (wrk -t1 -c1 fetching a 16 MiB file from nginx through the proxy; MB/s);
  - C{haproxy-l4-big8}, C{meshproxy-l4-big8}: the same, eight streams;
  - C{haproxy-l4-cps}, C{meshproxy-l4-cps}: short connections (wrk with
    C{Connection: close}: a new connection per request), meshproxy routing
    by rules (a destination C{/svc/hello} the rules rewrite);
  - C{haproxy-l4-sni}, C{meshproxy-l4-sni}: short TLS connections routed by
    the ClientHello's server name (HAProxy C{req_ssl_sni}, meshproxy's
    C{identifier: {kind: sni}} and rules), passed through to nginx, which
    terminates TLS (wrk resumes each slot's session).

With C{--workers}, meshproxy with 2 worker processes (C{meshproxy-w2}) and
HAProxy with C{nbthread 2} (C{haproxy-t2}) join the runs, on both CPUs; the
report compares their ratio with meshproxy/haproxy's (1 worker, 1 thread),
counting the CPU time of meshproxy's whole process group.

With C{--hold N}, after the load runs, N keep-alive connections are held to
meshproxy (and meshproxy-w2): its RSS per connection, then the latency of a
steady request rate through them.

With two or more CPUs the proxy under test runs on CPU 1 and nginx and wrk on
CPU 0 (C{taskset}; C{--proxy-cpus}, C{--load-cpus}, C{--wide-cpus} change
that), so that "one proxy core" is compared with "one proxy core"; both
proxies of a pair share CPU 1.

This is a benchmark, not a test: it never fails on a figure. It exits 0 when
the measurements ran (runs with HTTP or socket errors are flagged, not fatal),
1 when a server fails to start or to answer the sanity request, 2 on bad
usage or missing tools, 130 when interrupted. Every process it starts is
stopped on the way out, also on Ctrl-C or SIGTERM.

Stand-alone on purpose: standard library only, no meshproxy imports, so it
can benchmark any checkout (and any interpreter, see C{--python}).

Usage::

    python bench/run.py                       # 3 runs x 10 s, c=50, pinned
    python bench/run.py --only direct,haproxy --runs 1 --duration 3
    python bench/run.py --tls --runs 3 --duration 5 --c1-runs 0
    python bench/run.py --h2 --only haproxy,meshproxy --runs 3 --duration 5
    python bench/run.py --l4 --only haproxy,meshproxy --runs 3 --duration 5
    python bench/run.py --workers --hold 10000 --c1-runs 0 --churn 0
    python bench/run.py --json bench/results/today.json
"""

import argparse
import datetime
import http.client
import json
import os
import platform
import re
import shutil
import signal
import socket
import ssl
import statistics
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Every socket this harness opens or asks a server to open is on this address.
LOOPBACK = "127.0.0.1"

#: Targets in the order they are measured within a run: the plain ones (the
#: default), then those --tls adds.
TARGETS = ("direct", "haproxy", "meshproxy")
TLS_TARGETS = (
    "haproxy-tls", "meshproxy-tls",
    "haproxy-tls-hs", "meshproxy-tls-hs",
    "haproxy-tls-full", "meshproxy-tls-full",
    "haproxy-mtls", "meshproxy-mtls",
)
#: What --l4 adds (see the module docstring).
L4_TARGETS = (
    "haproxy-l4-big1", "meshproxy-l4-big1",
    "haproxy-l4-big8", "meshproxy-l4-big8",
    "haproxy-l4-cps", "meshproxy-l4-cps",
    "haproxy-l4-sni", "meshproxy-l4-sni",
)
#: What --telemetry adds: the plain meshproxy with tracing exported to a
#: local receiver at 1% and 100% sampling, and with the access log on (to a
#: file), each a ratio to the plain meshproxy of the same run.
TELEMETRY_TARGETS = ("meshproxy-trace1", "meshproxy-trace100", "meshproxy-log")
#: What --features adds: the plain meshproxy with one default feature that has
#: a config key turned off (round robin in place of the peak-EWMA balancer;
#: no failure accrual), each beside the plain meshproxy of the same run: the
#: CPU per request of that feature is the difference. (Features without a
#: key, metrics and the retry budget, are measured in process by
#: bench/hotpath.py.)
FEATURE_TARGETS = ("meshproxy-rr", "meshproxy-noaccrual", "meshproxy-busypoll")
#: What --h2 adds: h2load through HAProxy's h2 frontend and meshproxy, with 1
#: and 100 concurrent streams per connection.
H2_TARGETS = ("haproxy-h2", "meshproxy-h2", "haproxy-h2-m100", "meshproxy-h2-m100")
#: What --h2up adds: HTTP/2 end to end, to nginx's h2c server.
H2UP_TARGETS = (
    "direct-h2up", "haproxy-h2up", "meshproxy-h2up",
    "direct-h2up-m100", "haproxy-h2up-m100", "meshproxy-h2up-m100",
)
#: What --workers adds: meshproxy with 2 worker processes beside HAProxy
#: with 2 threads, both on every CPU (see "Worker processes" in
#: bench/README.md); their ratio is compared with meshproxy/haproxy's.
WORKER_TARGETS = ("haproxy-t2", "meshproxy-w2")
ALL_TARGETS = (TARGETS + TLS_TARGETS + TELEMETRY_TARGETS + FEATURE_TARGETS + H2_TARGETS
               + H2UP_TARGETS + L4_TARGETS + WORKER_TARGETS)


class Target:
    """
    How one target is driven and what it is charged.

    @ivar server: the server wrk talks to (a key of L{Bench.ports}).
    @ivar scheme: C{"http"} or C{"https"}.
    @ivar servers: the proxy servers whose CPU time counts for it (a pair
        counts both); empty for nginx alone.
    @ivar close: whether wrk sends C{Connection: close}, so that every
        request opens a new connection (a new TLS handshake over https).
    @ivar handshakes: whether it is driven by C{openssl s_time -new} loops
        (full TLS handshakes, no request) instead of wrk.
    @ivar streams: for an HTTP/2 target, driven by h2load instead of wrk, the
        concurrent streams per connection; else L{None}.
    @ivar path: the path wrk fetches.
    @ivar connections: wrk's C{-c} for this target, or L{None} for
        C{--connections}; C{threads} likewise.
    @ivar transfer: whether its figure is bytes per second (large
        transfers) rather than requests.
    @ivar hostname: the host name of its URL (a TLS target routed by the
        server name wrk sends), or L{None} for 127.0.0.1.
    """

    def __init__(self, server, scheme="http", servers=(), close=False, handshakes=False,
                 path="/", connections=None, threads=None, transfer=False, hostname=None,
                 streams=None):
        self.server = server
        self.scheme = scheme
        self.servers = tuple(servers)
        self.close = close
        self.handshakes = handshakes
        self.streams = streams
        self.path = path
        self.connections = connections
        self.threads = threads
        self.transfer = transfer
        self.hostname = hostname


SPECS = {
    "direct": Target("nginx"),
    "haproxy": Target("haproxy", servers=["haproxy"]),
    "meshproxy": Target("meshproxy", servers=["meshproxy"]),
    "haproxy-tls": Target("haproxy-tls", "https", ["haproxy-tls"]),
    "meshproxy-tls": Target("meshproxy-tls", "https", ["meshproxy-tls"]),
    "haproxy-tls-hs": Target("haproxy-tls", "https", ["haproxy-tls"], close=True),
    "meshproxy-tls-hs": Target("meshproxy-tls", "https", ["meshproxy-tls"], close=True),
    "haproxy-tls-full": Target("haproxy-tls", "https", ["haproxy-tls"], handshakes=True),
    "meshproxy-tls-full": Target("meshproxy-tls", "https", ["meshproxy-tls"], handshakes=True),
    "haproxy-mtls": Target("haproxy-out", servers=["haproxy-out", "haproxy-in"]),
    "meshproxy-mtls": Target("meshproxy-out", servers=["meshproxy-out", "meshproxy-in"]),
    "meshproxy-trace1": Target("meshproxy-trace1", servers=["meshproxy-trace1"]),
    "meshproxy-trace100": Target("meshproxy-trace100", servers=["meshproxy-trace100"]),
    "meshproxy-log": Target("meshproxy-log", servers=["meshproxy-log"]),
    "meshproxy-rr": Target("meshproxy-rr", servers=["meshproxy-rr"]),
    "meshproxy-noaccrual": Target("meshproxy-noaccrual", servers=["meshproxy-noaccrual"]),
    "meshproxy-busypoll": Target("meshproxy-busypoll", servers=["meshproxy-busypoll"]),
    "haproxy-h2": Target("haproxy-h2", servers=["haproxy-h2"], streams=1),
    "meshproxy-h2": Target("meshproxy", servers=["meshproxy"], streams=1),
    "haproxy-h2-m100": Target("haproxy-h2", servers=["haproxy-h2"], streams=100),
    "meshproxy-h2-m100": Target("meshproxy", servers=["meshproxy"], streams=100),
    "direct-h2up": Target("nginx-h2", streams=1),
    "haproxy-h2up": Target("haproxy-h2up", servers=["haproxy-h2up"], streams=1),
    "meshproxy-h2up": Target("meshproxy-h2up", servers=["meshproxy-h2up"], streams=1),
    "direct-h2up-m100": Target("nginx-h2", streams=100),
    "haproxy-h2up-m100": Target("haproxy-h2up", servers=["haproxy-h2up"], streams=100),
    "meshproxy-h2up-m100": Target("meshproxy-h2up", servers=["meshproxy-h2up"], streams=100),
    "haproxy-l4-big1": Target("haproxy-l4", servers=["haproxy-l4"], path="/big",
                              connections=1, threads=1, transfer=True),
    "meshproxy-l4-big1": Target("meshproxy-l4", servers=["meshproxy-l4"], path="/big",
                                connections=1, threads=1, transfer=True),
    "haproxy-l4-big8": Target("haproxy-l4", servers=["haproxy-l4"], path="/big",
                              connections=8, threads=2, transfer=True),
    "meshproxy-l4-big8": Target("meshproxy-l4", servers=["meshproxy-l4"], path="/big",
                                connections=8, threads=2, transfer=True),
    "haproxy-l4-cps": Target("haproxy-l4", servers=["haproxy-l4"], close=True),
    "meshproxy-l4-cps": Target("meshproxy-l4", servers=["meshproxy-l4"], close=True),
    "haproxy-t2": Target("haproxy-t2", servers=["haproxy-t2"]),
    "meshproxy-w2": Target("meshproxy-w2", servers=["meshproxy-w2"]),
    "haproxy-l4-sni": Target("haproxy-l4-sni", "https", ["haproxy-l4-sni"], close=True,
                             hostname="localhost"),
    "meshproxy-l4-sni": Target("meshproxy-l4-sni", "https", ["meshproxy-l4-sni"], close=True,
                               hostname="localhost"),
}

#: The ratios reported (a/b), when both targets were measured.
RATIOS = (
    ("meshproxy", "direct"),
    ("meshproxy", "haproxy"),
    ("haproxy", "direct"),
    ("meshproxy-tls", "meshproxy"),
    ("meshproxy-tls", "haproxy-tls"),
    ("haproxy-tls", "haproxy"),
    ("meshproxy-tls-hs", "haproxy-tls-hs"),
    ("meshproxy-tls-full", "haproxy-tls-full"),
    ("meshproxy-mtls", "haproxy-mtls"),
    ("meshproxy-mtls", "meshproxy"),
    ("meshproxy-trace1", "meshproxy"),
    ("meshproxy-trace100", "meshproxy"),
    ("meshproxy-log", "meshproxy"),
    ("meshproxy-rr", "meshproxy"),
    ("meshproxy-noaccrual", "meshproxy"),
    ("meshproxy-busypoll", "meshproxy"),
    ("meshproxy-h2", "haproxy-h2"),
    ("meshproxy-h2-m100", "haproxy-h2-m100"),
    ("meshproxy-h2", "meshproxy"),
    ("haproxy-h2", "haproxy"),
    ("meshproxy-h2up", "direct-h2up"),
    ("meshproxy-h2up", "haproxy-h2up"),
    ("haproxy-h2up", "direct-h2up"),
    ("meshproxy-h2up-m100", "direct-h2up-m100"),
    ("meshproxy-h2up-m100", "haproxy-h2up-m100"),
    ("meshproxy-h2up", "meshproxy-h2"),
    ("meshproxy-l4-big1", "haproxy-l4-big1"),
    ("meshproxy-l4-big8", "haproxy-l4-big8"),
    ("meshproxy-l4-cps", "haproxy-l4-cps"),
    ("meshproxy-l4-sni", "haproxy-l4-sni"),
    ("meshproxy-w2", "haproxy-t2"),
    ("meshproxy-w2", "meshproxy"),
    ("haproxy-t2", "haproxy"),
)

REPO_ROOT = Path(__file__).resolve().parent.parent
APT_HINT = "apt-get install -y wrk haproxy nginx-light"
HOST_HEADER = "hello"
EXPECTED_BODY = b"hello\n"

# CPU layout when pinned: the proxy alone on one core, everything else on the other.
PROXY_CPU = "1"
LOAD_CPU = "0"
# The 2-worker and 2-thread proxies: on both cores, shared with nginx and wrk.
WIDE_CPUS = "0,1"

# `python -m twisted.scripts.twistd` imports the module and exits 0 without
# doing anything (the module has no __main__ block), so call its run() instead.
TWISTD_BOOT = (
    "import sys; sys.argv[0] = 'twistd'; "
    "from twisted.scripts.twistd import run; run()"
)

NGINX_CONF = string.Template(
    """\
worker_processes 1;
daemon off;
error_log $tmp/nginx-error.log warn;
pid $tmp/nginx.pid;
events { worker_connections 4096; }
http {
    access_log off;
    keepalive_requests 1000000;
    sendfile on;
$temp_paths
    server {
        listen $listen;
        location / { return 200 "hello\\n"; }
        location = /big { alias $tmp/www/big.bin; default_type application/octet-stream; }
    }
$servers
}
"""
)

# With --l4: nginx terminating TLS for the SNI targets, the bench's server
# certificate (for localhost), sessions resumed as wrk asks.
NGINX_TLS_SERVER = string.Template(
    """    server {
        listen $listen ssl;
        ssl_certificate $certs/server.pem;
        ssl_certificate_key $certs/server.key;
        ssl_session_cache shared:bench:1m;
        location / { return 200 "hello\\n"; }
    }
"""
)

# With --h2up: nginx serving h2c (HTTP/2 with prior knowledge) on its own port.
NGINX_H2_SERVER = string.Template(
    """    server {
        listen $listen http2;
        location / { return 200 "hello\\n"; }
    }
"""
)

#: The size of the file the large-transfer targets fetch.
BIG_FILE_BYTES = 16 * 1024 * 1024

# HAProxy in tcp mode on one thread: the layer-4 baseline.
HAPROXY_L4_CONF = string.Template(
    """global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind $listen
    default_backend be
backend be
    server s1 $backend
"""
)

# HAProxy routing TLS connections by the ClientHello's server name.
HAPROXY_L4_SNI_CONF = string.Template(
    """global
    nbthread 1
    maxconn 8000
defaults
    mode tcp
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind $listen
    tcp-request inspect-delay 5s
    tcp-request content accept if { req_ssl_hello_type 1 }
    use_backend be if { req_ssl_sni -i localhost }
backend be
    server s1 $backend
"""
)

# meshproxy's TCP router: a destination the rules rewrite.
MESHPROXY_L4_CONF = """\
admin: {listen: "tcp:$adminport:interface=$loopback"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["$loopback:$nginxport"]}}
routers:
  - name: bench
    protocol: tcp
    listen: "tcp:$port:interface=$loopback:backlog=1024"
    destination: /svc/hello
    rules: "/svc => /#/static;"
"""

# meshproxy's TCP router routing by SNI, passing TLS through to nginx.
MESHPROXY_L4_SNI_CONF = """\
admin: {listen: "tcp:$adminport:interface=$loopback"}
namers:
  - {kind: static, prefix: /#/static, services: {tls: ["$loopback:$nginxport"]}}
routers:
  - name: bench
    protocol: tcp
    listen: "tcp:$port:interface=$loopback:backlog=1024"
    identifier: {kind: sni}
    rules: "/svc/localhost => /#/static/tls;"
"""

# HAProxy in http mode on one thread, keeping upstream connections (the
# baseline every meshproxy figure is a ratio to), with the two addresses
# filled in.
HAPROXY_CONF = string.Template(
    """\
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind $listen
    default_backend be
backend be
    server s1 $backend maxconn 1000
"""
)

# The same HAProxy on two threads (--workers).
HAPROXY_T2_CONF = string.Template(
    HAPROXY_CONF.template.replace("    nbthread 1\n", "    nbthread 2\n"))

# The same HAProxy with an HTTP/2 frontend: h2c with prior knowledge (what
# h2load speaks), HTTP/1.1 to nginx.
HAPROXY_H2_CONF = string.Template(
    HAPROXY_CONF.template.replace("    bind $listen\n", "    bind $listen proto h2\n"))

# The same HAProxy speaking HTTP/2 to nginx's h2c server too.
HAPROXY_H2UP_CONF = string.Template(
    HAPROXY_H2_CONF.template.replace(" maxconn 1000\n", " proto h2 maxconn 1000\n"))

# $-placeholders, so that YAML's own braces need no escaping. --meshproxy-config
# replaces this with a file using the same placeholders. Up to 1024 idle
# connections to nginx are kept (HAProxy may keep 1000): the -h2-m100 targets
# have hundreds of requests in flight, past the default 64.
MESHPROXY_CONF = """\
admin: {listen: "tcp:$adminport:interface=$loopback"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["$loopback:$nginxport"]}}
routers:
  - name: bench
    protocol: http
    listen: "tcp:$port:interface=$loopback:backlog=1024"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
    client: {maxIdlePerEndpoint: 1024}
"""

# --workers: the plain config with 2 worker processes.
MESHPROXY_W2_CONF = "workers: 2\n" + MESHPROXY_CONF

# --h2up: the plain config, HTTP/2 to nginx's h2c server.
MESHPROXY_H2UP_CONF = MESHPROXY_CONF.replace(
    "client: {maxIdlePerEndpoint: 1024}", "client: {upstreamProtocol: h2}")

# --features: the plain config with one feature off (both keys belong to the
# router, after its client section).
RR_CONF = MESHPROXY_CONF + "    loadBalancer: {kind: roundRobin}\n"
NO_ACCRUAL_CONF = MESHPROXY_CONF + "    failureAccrual: {kind: none}\n"
# busyPoll (off by default): the latency it saves at concurrency 1, and the CPU
# it costs at a light steady rate (bench/paced.py).
BUSYPOLL_CONF = "busyPoll: 0.1ms\n" + MESHPROXY_CONF

# The telemetry targets: the plain config plus a telemetry section; spans go
# to the harness's receiver (a separate process on the load CPU).
TRACING_CONF = MESHPROXY_CONF + """\
telemetry:
  tracing:
    sampleRate: $rate
    zipkin: {url: "http://$loopback:$receiverport/api/v2/spans"}
    batch: {size: $batchsize}
"""
ACCESS_LOG_CONF = MESHPROXY_CONF + """\
telemetry:
  accessLog: {path: "$logpath"}
"""

# A span receiver: accepts Zipkin posts, counts spans, answers 202. Standard
# library only, run by the harness's interpreter. It keeps connections alive
# (HTTP/1.1), as Zipkin and OpenTelemetry collectors do: an HTTP/1.0 receiver
# closes each connection after its answer, so every post paid a new
# connection and posts raced the close (about 40% failed, counted
# export-failed).
SPAN_RECEIVER = """\
import http.server, json, sys
class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    spans = 0
    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        Handler.spans += len(json.loads(body))
        self.send_response(202)
        self.send_header("Content-Length", "0")
        self.end_headers()
    def do_GET(self):
        body = str(Handler.spans).encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
"""


# TLS targets: HAProxy terminating TLS with the certificate meshproxy serves.
HAPROXY_TLS_CONF = string.Template(
    """\
global
    nbthread 1
    maxconn 4000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind $listen ssl crt $crt alpn http/1.1
    default_backend be
backend be
    server s1 $backend maxconn 1000
"""
)

# The outbound HAProxy of the mTLS pair: plain in, TLS out with a client
# certificate, the inbound one's certificate verified against the CA and its
# name. (HAProxy checks a DNS name; meshproxy checks the URI SAN.)
HAPROXY_OUT_CONF = string.Template(
    """\
global
    nbthread 1
    maxconn 4000
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind $listen
    default_backend be
backend be
    default-server ssl verify required ca-file $ca crt $crt
    server s1 $backend maxconn 1000 verifyhost localhost alpn http/1.1
"""
)

# The inbound HAProxy of the mTLS pair: client certificates required, the
# caller checked by name and told upstream, as meshproxy's policy and
# x-forwarded-client-cert do.
HAPROXY_IN_CONF = string.Template(
    """\
global
    nbthread 1
    maxconn 4000
    ssl-default-bind-options ssl-min-ver TLSv1.2
defaults
    mode http
    option http-keep-alive
    http-reuse always
    timeout connect 5s
    timeout client 30s
    timeout server 30s
frontend fe
    bind $listen ssl crt $crt ca-file $ca verify required alpn http/1.1
    http-request deny deny_status 403 unless { ssl_c_s_dn(CN) -m str web }
    http-request set-var(txn.hash) ssl_c_der,sha2(256),hex
    http-request set-header x-forwarded-client-cert "Hash=%[var(txn.hash)];Subject=%[ssl_c_s_dn]"
    default_backend be
backend be
    server s1 $backend maxconn 1000
"""
)

# meshproxy terminating TLS: the plain config with a tls section.
MESHPROXY_TLS_CONF = MESHPROXY_CONF + """\
    tls:
      certificates: [{cert: "$certs/server.pem", key: "$certs/server.key"}]
"""

# The inbound meshproxy of the mTLS pair: client certificates required and a
# policy letting the caller's identity reach hello.
MESHPROXY_IN_CONF = MESHPROXY_CONF + """\
    tls:
      certificates: [{cert: "$certs/server.pem", key: "$certs/server.key"}]
      clientCertificates: {ca: "$certs/ca.pem", verify: required}
    policy:
      default: deny
      rules: [{callers: ["spiffe://bench.local/web"], names: [/svc/hello]}]
"""

# The outbound meshproxy of the mTLS pair: hello is the inbound one, reached
# over mutual TLS as spiffe://bench.local/web.
MESHPROXY_OUT_CONF = """\
admin: {listen: "tcp:$adminport:interface=$loopback"}
namers:
  - {kind: static, prefix: /#/static, services: {hello: ["$loopback:$inport"]}}
routers:
  - name: bench
    protocol: http
    listen: "tcp:$port:interface=$loopback:backlog=1024"
    identifier: {kind: host}
    rules: "/svc => /#/static;"
    upstreamTls:
      ca: "$certs/ca.pem"
      serverName: "spiffe://bench.local/{service}"
      cert: "$certs/web.pem"
      key: "$certs/web.key"
"""

# Run with the interpreter that runs meshproxy, the checkout first on its
# path: the CA, the servers' certificate (for 127.0.0.1, localhost and
# spiffe://bench.local/hello) and the caller's (spiffe://bench.local/web).
MAKE_CERTS = """\
import sys
from meshproxy import certs
directory = sys.argv[1]
certs.initAuthority(directory, "meshproxy bench CA")
certs.issue(directory, "server", uris=("spiffe://bench.local/hello",),
            dnsNames=("localhost",), ips=("127.0.0.1",))
certs.issue(directory, "web", uris=("spiffe://bench.local/web",))
"""


class HarnessError(Exception):
    """
    The benchmark cannot go on: a server did not start, answered wrongly or
    died, or wrk failed.

    @ivar procs: the L{Proc}s whose logs explain the failure.
    """

    def __init__(self, message, procs=()):
        super().__init__(message)
        self.procs = list(procs)


def say(message=""):
    """Print progress to stderr, keeping stdout for the results."""
    print(message, file=sys.stderr, flush=True)


def tail(path, lines=30):
    """
    Return the last C{lines} lines of a text file, or C{""} if it is missing.

    @param path: a L{Path}.
    """
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


class Proc:
    """
    A child process in its own session (so that a Ctrl-C meant for the
    harness does not reach it before the harness has stopped it in order),
    with stdout and stderr in files.

    @ivar name: short name used in file names and messages.
    @ivar pid: the process id; with C{taskset} this is the pinned program
        itself, since taskset execs it.
    @ivar logs: the files worth showing when something goes wrong.
    """

    def __init__(self, name, argv, tmp, *, cwd=None, env=None, extra_logs=()):
        """
        @param name: short name.
        @param argv: the command line, program first.
        @param tmp: the L{Path} of the directory for its output files.
        @param cwd: working directory, or L{None} for the harness's.
        @param env: environment, or L{None} to inherit.
        @param extra_logs: further L{Path}s (log files the program writes).
        """
        self.name = name
        self.argv = list(argv)
        out = tmp / f"{name}.stdout"
        err = tmp / f"{name}.stderr"
        self.logs = [out, err, *extra_logs]
        with open(out, "wb") as stdout, open(err, "wb") as stderr:
            self.popen = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=stdout,
                stderr=stderr,
                cwd=cwd,
                env=env,
                start_new_session=True,
            )
        self.pid = self.popen.pid

    def alive(self):
        """Return whether the process is still running."""
        return self.popen.poll() is None

    def describe_exit(self):
        """Return a phrase describing how the process ended, if it did."""
        rc = self.popen.poll()
        if rc is None:
            return "is still running"
        if rc < 0:
            return f"was killed by signal {-rc}"
        return f"exited with status {rc}"

    def stop(self, grace=5.0):
        """
        Stop the process and its children (its process group, which is its
        own since it was started in a new session): SIGTERM, then SIGKILL
        after C{grace} seconds. Does nothing if it has already exited, so a
        reused pid is never signalled.
        """
        if self.popen.poll() is not None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(self.pid, sig)
            except ProcessLookupError:
                pass
            try:
                self.popen.wait(grace)
                return
            except subprocess.TimeoutExpired:
                continue

    def log_tails(self, lines=30):
        """Return the tails of this process's log files, labelled."""
        parts = []
        for path in self.logs:
            text = tail(path, lines)
            if text:
                parts.append(f"--- {self.name}: {path.name} (last {lines} lines) ---\n{text}")
        if not parts:
            parts.append(f"--- {self.name}: no output ---")
        return "\n".join(parts)


# --- /proc readers --------------------------------------------------------

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    """
    Return user+system CPU seconds used so far by all threads of C{pid}
    (fields 14 and 15 of /proc/pid/stat).
    """
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    # The command name (field 2) may contain spaces and parentheses.
    fields = stat.rpartition(")")[2].split()
    utime, stime = int(fields[11]), int(fields[12])
    return (utime + stime) / CLOCK_TICKS


def process_tree(pid):
    """
    Return C{pid} and its descendants (meshproxy's zygote and workers), from
    C{/proc/PID/task/PID/children}.
    """
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(c) for c in f.read().split()]
    except OSError:
        children = []
    found = [pid]
    for child in children:
        found += process_tree(child)
    return found


def tree_cpu_seconds(pid):
    """
    Return the CPU seconds used so far by C{pid} and its living descendants
    (a worker that exited takes its CPU time with it: the figure is for a
    run in which none did).
    """
    total = 0.0
    for p in process_tree(pid):
        try:
            total += cpu_seconds(p)
        except OSError:
            pass  # (gone between the listing and the read)
    return total


def smaps_kib(pid):
    """
    Return C{{"rss_kib", "uss_kib"}} of C{pid} from C{/proc/PID/smaps_rollup}
    (USS: C{Private_Clean + Private_Dirty}, the memory only it holds).
    """
    rss = uss = 0
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key == "Rss":
                rss = int(value.split()[0])
            elif key in ("Private_Clean", "Private_Dirty"):
                uss += int(value.split()[0])
    return {"rss_kib": rss, "uss_kib": uss}


def proc_status(pid):
    """Return /proc/pid/status as a dict of strings."""
    result = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            result[key] = value.strip()
    return result


def memory_kib(pid):
    """Return C{{"rss_kib": VmRSS, "peak_rss_kib": VmHWM}} of C{pid}."""
    status = proc_status(pid)
    return {
        "rss_kib": int(status["VmRSS"].split()[0]),
        "peak_rss_kib": int(status["VmHWM"].split()[0]),
    }


def allowed_cpus(pid):
    """Return the CPU affinity list of C{pid} as the kernel reports it."""
    return proc_status(pid).get("Cpus_allowed_list", "?")


# --- networking -----------------------------------------------------------


def free_ports(n):
    """
    Return C{n} distinct free TCP ports on the loopback address.

    The sockets are all bound before any is closed, so the ports differ; some
    other program could still take one before the server does, in which case
    that server fails to start with a clear message.
    """
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            socks.append(s)
            s.bind((LOOPBACK, 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def http_get(port, path="/", host=HOST_HEADER, timeout=2.0, tls=None, hostname=None):
    """
    Send one GET to C{127.0.0.1:port} and return C{(status, body)}.

    @param tls: an L{ssl.SSLContext} for https (which verifies the server's
        certificate), or L{None} for http.
    @param hostname: the name to connect to instead of 127.0.0.1 (sent by
        SNI over https: C{localhost}, which /etc/hosts maps to 127.0.0.1).
    @raise OSError: or L{http.client.HTTPException} if no answer came.
    """
    address = hostname or LOOPBACK
    if tls is None:
        conn = http.client.HTTPConnection(address, port, timeout=timeout)
    else:
        conn = http.client.HTTPSConnection(address, port, timeout=timeout, context=tls)
    try:
        conn.request("GET", path, headers={"Host": host})
        response = conn.getresponse()
        return response.status, response.read()
    finally:
        conn.close()


def wait_ready(proc, port, path, timeout, what, host=HOST_HEADER, tls=None, hostname=None):
    """
    Poll C{GET path} on C{port} every 0.1 s until it answers 200.

    @param proc: the L{Proc} serving it; if it exits, waiting stops at once.
    @param timeout: seconds to wait in all (each try is bounded too).
    @param what: name used in the error message.
    @param host: the C{Host} header (the admin API answers only to
        addresses and names it knows).
    @param tls: an L{ssl.SSLContext} when it speaks https.
    @raise HarnessError: if it exits or does not answer 200 in time.
    """
    deadline = time.monotonic() + timeout
    last = "no attempt made"
    while True:
        if not proc.alive():
            raise HarnessError(f"{what} {proc.describe_exit()} before it was ready", [proc])
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise HarnessError(
                f"{what} not ready after {timeout:g} s: GET http://{LOOPBACK}:{port}{path}"
                f" -> {last}",
                [proc],
            )
        try:
            status, _ = http_get(port, path, host=host, timeout=min(1.0, max(remaining, 0.05)),
                                 tls=tls, hostname=hostname)
        except (OSError, http.client.HTTPException) as e:
            last = f"{type(e).__name__}: {e}"
        else:
            if status == 200:
                return
            last = f"HTTP {status}"
        time.sleep(0.1)


# --- wrk ------------------------------------------------------------------

_TIME_UNITS = {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_BYTE_UNITS = {"B": 1, "KB": 1024, "MB": 1024 ** 2, "GB": 1024 ** 3}
_TIME = r"[0-9.]+(?:us|ms|s|m|h)"


def parse_duration(text):
    """Convert one of wrk's times (C{"870.00us"}, C{"1.33ms"}, C{"2.00s"}) to seconds."""
    m = re.fullmatch(r"([0-9.]+)(us|ms|s|m|h)", text)
    if m is None:
        raise ValueError(f"not a wrk time: {text!r}")
    return float(m.group(1)) * _TIME_UNITS[m.group(2)]


def parse_wrk(output):
    """
    Parse C{wrk --latency} output.

    @return: a dict with C{rps}, C{requests}, C{elapsed_s}, C{p50_ms},
        C{p75_ms}, C{p90_ms}, C{p99_ms} (L{None} if absent), C{errors}
        (C{non_2xx_3xx}, C{connect}, C{read}, C{write}, C{timeout}) and
        C{error_total}.
    @raise ValueError: if the requests/sec line is missing.
    """
    rps = re.search(r"^Requests/sec:\s+([0-9.]+)", output, re.M)
    if rps is None:
        raise ValueError("no 'Requests/sec:' line in wrk output")
    result = {"rps": float(rps.group(1)), "requests": None, "elapsed_s": None}
    done = re.search(rf"^\s*(\d+) requests in ({_TIME})", output, re.M)
    if done:
        result["requests"] = int(done.group(1))
        result["elapsed_s"] = parse_duration(done.group(2))
    for pct in ("50", "75", "90", "99"):
        m = re.search(rf"^\s*{pct}%\s+({_TIME})\s*$", output, re.M)
        result[f"p{pct}_ms"] = parse_duration(m.group(1)) * 1e3 if m else None
    errors = {"non_2xx_3xx": 0, "connect": 0, "read": 0, "write": 0, "timeout": 0}
    sock = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    if sock:
        for key, value in zip(("connect", "read", "write", "timeout"), sock.groups(), strict=True):
            errors[key] = int(value)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    if non2xx:
        errors["non_2xx_3xx"] = int(non2xx.group(1))
    result["errors"] = errors
    result["error_total"] = sum(errors.values())
    transfer = re.search(r"^Transfer/sec:\s+([0-9.]+)([KMG]?B)", output, re.M)
    result["bytes_per_s"] = (
        float(transfer.group(1)) * _BYTE_UNITS[transfer.group(2)] if transfer else None)
    return result


# --- the benchmark --------------------------------------------------------


def parse_h2load(output, requestLog=""):
    """
    Parse h2load's summary, and the latency percentiles from its per-request
    log (C{--log-file}: start time, status, microseconds, tab-separated).

    @return: a dict shaped like L{parse_wrk}'s.
    @raise ValueError: when the summary is not there.
    """
    finished = re.search(r"finished in ([\d.]+)s, ([\d.]+) req/s", output)
    counts = re.search(
        r"requests: (\d+) total, (\d+) started, (\d+) done, (\d+) succeeded, "
        r"(\d+) failed, (\d+) errored, (\d+) timeout", output)
    statuses = re.search(r"status codes: (\d+) 2xx, (\d+) 3xx, (\d+) 4xx, (\d+) 5xx", output)
    if not (finished and counts and statuses):
        raise ValueError("no h2load summary")
    durations = sorted(
        int(fields[2]) for fields in (line.split("\t") for line in requestLog.splitlines())
        if len(fields) >= 3 and fields[2].isdigit())

    def percentile(q):
        if not durations:
            return None
        return durations[min(len(durations) - 1, int(q * len(durations)))] / 1000.0

    errors = {
        "failed": int(counts.group(5)),
        "errored": int(counts.group(6)),
        "timeout": int(counts.group(7)),
        "non2xx": sum(int(statuses.group(i)) for i in (2, 3, 4)),
    }
    return {
        "rps": float(finished.group(2)),
        "requests": int(counts.group(4)),
        "elapsed_s": float(finished.group(1)),
        "p50_ms": percentile(0.50), "p75_ms": percentile(0.75),
        "p90_ms": percentile(0.90), "p99_ms": percentile(0.99),
        "errors": errors, "error_total": sum(errors.values()),
    }


def median(values):
    """Median of the values that are not None, or None if there are none."""
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def ratio(a, b):
    """C{a / b}, or None when either is missing or b is zero."""
    if a is None or not b:
        return None
    return a / b


def _withCpu(result, cpu, wall):
    """
    Add the proxy's CPU figures of a load run to its parsed result (all
    None without a proxy, as for direct-h2up), and whether it is flagged
    (errors, or no request at all).
    """
    if cpu is not None:
        result["proxy_cpu_s"] = round(cpu, 3)
        result["proxy_cpu_util"] = round(cpu / wall, 3)
        result["cpu_us_per_req"] = (
            cpu * 1e6 / result["requests"] if result["requests"] else None)
    else:
        result["proxy_cpu_s"] = result["proxy_cpu_util"] = result["cpu_us_per_req"] = None
    result["flagged"] = result["error_total"] > 0 or not result["requests"]
    return result


class Bench:
    """
    One invocation: the servers it started, the results so far.

    @ivar procs: every L{Proc} started, stopped in reverse order by L{stop}.
    @ivar results: everything measured, as written by C{--json}.
    """

    def __init__(self, args, tools, tmp):
        self.args = args
        self.tools = tools
        self.tmp = tmp
        self.procs = []
        self.ports = {}
        # Server name to pid, for the proxies (whose CPU time is measured).
        self.pids = {}
        # Client contexts for https sanity requests (made with the certificates).
        self.tls = self.mtls = None
        self.results = {
            "meta": {},
            "targets": {name: {"runs": [], "c1_runs": []} for name in args.only},
            "summary": {},
            "c1_summary": {},
            "ratios": {},
            "c1_added_p50_us": {},
            "meshproxy_memory": {},
        }

    # -- processes

    def pinned(self, role, argv):
        """
        Prefix C{argv} with C{taskset -c CPUS} when pinning: the CPUs of
        C{role}, C{"load"} (nginx and the load generators), C{"proxy"} (a
        proxy under test) or C{"wide"} (the 2-worker and 2-thread proxies).
        """
        if self.args.pin:
            return [self.tools["taskset"], "-c", self.args.cpus[role], *argv]
        return list(argv)

    def spawn(self, name, argv, **kwargs):
        proc = Proc(name, argv, self.tmp, **kwargs)
        self.procs.append(proc)
        return proc

    def stop(self):
        """Stop every process started, newest first."""
        for proc in reversed(self.procs):
            proc.stop()

    def start_nginx(self, port, tls_port=None, certs=None, h2_port=None):
        """
        Start nginx on the load CPU: plain on C{port} (and the large file
        at C{/big}), with TLS on C{tls_port} when given, and h2c on
        C{h2_port} when given.
        """
        nginx = self.tools["nginx"]
        # nginx's workers run as nobody when started as root: the large file
        # is in a directory they can reach (the temp dir itself is 0700).
        www = self.tmp / "www"
        www.mkdir(mode=0o755, exist_ok=True)
        os.chmod(self.tmp, 0o711)
        big = www / "big.bin"
        with open(big, "wb") as f:
            f.write(os.urandom(1024 * 1024) * (BIG_FILE_BYTES // (1024 * 1024)))
        os.chmod(big, 0o644)
        servers = ""
        if tls_port is not None:
            servers = NGINX_TLS_SERVER.substitute(listen=f"{LOOPBACK}:{tls_port}", certs=certs)
        if h2_port is not None:
            servers += NGINX_H2_SERVER.substitute(listen=f"{LOOPBACK}:{h2_port}")
        built = subprocess.run([nginx, "-V"], capture_output=True, text=True).stderr
        temp_paths = [f"    client_body_temp_path {self.tmp}/nginx-body;",
                      f"    proxy_temp_path {self.tmp}/nginx-proxy;"]
        # Without these, nginx creates the compiled-in /var/lib/nginx/* at start.
        for module in ("fastcgi", "uwsgi", "scgi"):
            if f"--without-http_{module}_module" not in built:
                temp_paths.append(f"    {module}_temp_path {self.tmp}/nginx-{module};")
        conf = self.tmp / "nginx.conf"
        conf.write_text(NGINX_CONF.substitute(
            tmp=self.tmp, listen=f"{LOOPBACK}:{port}", temp_paths="\n".join(temp_paths),
            servers=servers))
        proc = self.spawn(
            "nginx",
            # -e: the error log to use before the config is read (else stderr/var/log).
            self.pinned("load", [nginx, "-p", str(self.tmp), "-e",
                                   str(self.tmp / "nginx-error.log"), "-c", str(conf)]),
            extra_logs=[self.tmp / "nginx-error.log"],
        )
        wait_ready(proc, port, "/", self.args.ready_timeout, "nginx")
        if tls_port is not None:
            wait_ready(proc, tls_port, "/", self.args.ready_timeout, "nginx (TLS)",
                       tls=self.tls, hostname="localhost")
        if h2_port is not None:
            self.wait_ready_h2(proc, h2_port, "nginx (h2c)")
        return proc

    def start_haproxy(self, name, template, port, backend_port, tls=None, h2=False,
                      hostname=None, cpu="proxy", **values):
        """
        Start one HAProxy, on the proxy CPU, and wait until it answers.

        @param template: its config, with C{$listen} and C{$backend}.
        @param tls: the L{ssl.SSLContext} its listener is reached with, or
            L{None} for plain HTTP.
        @param h2: whether its listener speaks HTTP/2 only (h2c).
        @param cpu: the CPUs it runs on when pinning.
        @param values: more of the template's placeholders.
        """
        conf = self.tmp / f"{name}.cfg"
        conf.write_text(template.substitute(
            listen=f"{LOOPBACK}:{port}", backend=f"{LOOPBACK}:{backend_port}", **values))
        proc = self.spawn(
            name,
            self.pinned(cpu, [self.tools["haproxy"], "-db", "-f", str(conf)]),
        )
        if h2:
            self.wait_ready_h2(proc, port, name)
        else:
            wait_ready(proc, port, "/", self.args.ready_timeout, name, tls=tls,
                       hostname=hostname)
        return proc

    def h2_get(self, port):
        """
        One GET / over HTTP/2 with prior knowledge (h2load -n 1).

        @return: whether it was answered 2xx.
        """
        try:
            done = subprocess.run(
                [self.tools["h2load"], "-n", "1", "-c", "1", "-H", f":authority: {HOST_HEADER}",
                 f"http://{LOOPBACK}:{port}/"],
                capture_output=True, text=True, timeout=10)
        except subprocess.TimeoutExpired:
            return False
        return " 1 succeeded" in done.stdout and "status codes: 1 2xx" in done.stdout

    def wait_ready_h2(self, proc, port, what):
        deadline = time.monotonic() + self.args.ready_timeout
        while time.monotonic() < deadline:
            if not proc.alive():
                raise HarnessError(f"{what} {proc.describe_exit()} before answering", [proc])
            if self.h2_get(port):
                return
            time.sleep(0.1)
        raise HarnessError(f"{what} did not answer over HTTP/2 within "
                           f"{self.args.ready_timeout} s", [proc])

    def start_meshproxy(self, name, template, port, admin_port, cpu="proxy", **values):
        """
        Start one meshproxy under twistd, on the proxy CPU, and wait until
        its admin API says it is ready.

        @param template: its config, with C{$port}, C{$adminport} and
            C{$loopback} (and the placeholders of C{values}).
        @param cpu: the CPUs it (and its workers) run on when pinning.
        """
        try:
            text = string.Template(template).substitute(
                port=port, adminport=admin_port, loopback=LOOPBACK, **values)
        except (KeyError, ValueError) as e:
            raise HarnessError(f"bad meshproxy config template: {e!r}") from e
        conf = self.tmp / f"{name}.yaml"
        conf.write_text(text)
        log = self.tmp / f"{name}.log"
        env = dict(os.environ)
        # Benchmark this checkout, whether or not (and however) it is installed.
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        env["PYTHONUNBUFFERED"] = "1"
        argv = [self.args.python, "-c", TWISTD_BOOT, "-n", "--pidfile=",
                f"--logfile={log}", "meshproxy", "--config", str(conf)]
        proc = self.spawn(name, self.pinned(cpu, argv),
                          cwd=REPO_ROOT, env=env, extra_logs=[log])
        wait_ready(proc, admin_port, "/ready", self.args.ready_timeout,
                   f"{name} (admin /ready)", host=f"{LOOPBACK}:{admin_port}")
        return proc

    def make_certs(self):
        """
        Make the TLS targets' CA and certificates with meshproxy.certs (run
        by the interpreter that runs meshproxy: the harness imports nothing
        of meshproxy), HAProxy's PEM files (certificate then key), and the
        harness's own client contexts.

        @return: the directory of the files.
        """
        directory = self.tmp / "certs"
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(REPO_ROOT), env.get("PYTHONPATH")) if p)
        made = subprocess.run([self.args.python, "-c", MAKE_CERTS, str(directory)],
                              capture_output=True, text=True, env=env, cwd=REPO_ROOT)
        if made.returncode != 0:
            raise HarnessError(f"meshproxy.certs could not make the certificates:\n"
                               f"{made.stdout}{made.stderr}")
        for name in ("server", "web"):
            pem = (directory / f"{name}.pem").read_text() + (directory / f"{name}.key").read_text()
            (directory / f"{name}-haproxy.pem").write_text(pem)
        # The sanity requests verify the servers' certificate (for 127.0.0.1).
        self.tls = ssl.create_default_context(cafile=str(directory / "ca.pem"))
        self.mtls = ssl.create_default_context(cafile=str(directory / "ca.pem"))
        self.mtls.load_cert_chain(str(directory / "web.pem"), str(directory / "web.key"))
        return directory

    def start_servers(self):
        """
        Start nginx and the proxies the selected targets need, on free
        ports; the inbound proxy of a pair before its outbound one.
        """
        args = self.args
        meta = self.results["meta"]
        needed = set()
        for target in args.only:
            needed.update(SPECS[target].servers)
        meshproxies = [n for n in ("meshproxy", "meshproxy-tls", "meshproxy-in", "meshproxy-out",
                                   *TELEMETRY_TARGETS, *FEATURE_TARGETS,
                                   "meshproxy-l4", "meshproxy-l4-sni",
                                   "meshproxy-h2up", "meshproxy-w2")
                       if n in needed]
        tracing = bool(needed & {"meshproxy-trace1", "meshproxy-trace100"})
        sni = bool(needed & {"haproxy-l4-sni", "meshproxy-l4-sni"})
        h2up = any(t in H2UP_TARGETS for t in args.only)
        names = ["nginx", *sorted(needed), *(f"{n}-admin" for n in meshproxies),
                 *(["receiver"] if tracing else []), *(["nginx-tls"] if sni else []),
                 *(["nginx-h2"] if h2up else [])]
        self.ports = dict(zip(names, free_ports(len(names)), strict=True))
        # The plain meshproxy's admin port keeps its name (JSON of earlier runs).
        if "meshproxy-admin" in self.ports:
            self.ports["admin"] = self.ports.pop("meshproxy-admin")
        self.ports["direct"] = self.ports["nginx"]
        meta["ports"] = dict(self.ports)
        ports = self.ports
        nginx = ports["nginx"]

        say(f"starting servers in {self.tmp} ...")
        certs = None
        if needed & {"haproxy-tls", "meshproxy-tls", "haproxy-in", "meshproxy-in"} or sni:
            certs = self.make_certs()
            say(f"certificates made with meshproxy.certs in {certs}")
        proc = self.start_nginx(nginx, ports.get("nginx-tls"), certs, ports.get("nginx-h2"))
        meta["affinity"] = {"nginx": allowed_cpus(proc.pid)}
        if tracing:
            receiver = self.spawn("receiver", self.pinned("load", [
                sys.executable, "-c", SPAN_RECEIVER, str(ports["receiver"])]))
            wait_ready(receiver, ports["receiver"], "/", self.args.ready_timeout, "span receiver")
        plain = MESHPROXY_CONF
        if args.meshproxy_config:
            plain = Path(args.meshproxy_config).read_text()
        starts = {
            "haproxy": lambda: self.start_haproxy(
                "haproxy", HAPROXY_CONF, ports["haproxy"], nginx),
            "haproxy-h2": lambda: self.start_haproxy(
                "haproxy-h2", HAPROXY_H2_CONF, ports["haproxy-h2"], nginx, h2=True),
            "meshproxy": lambda: self.start_meshproxy(
                "meshproxy", plain, ports["meshproxy"], ports["admin"], nginxport=nginx),
            "haproxy-tls": lambda: self.start_haproxy(
                "haproxy-tls", HAPROXY_TLS_CONF, ports["haproxy-tls"], nginx, tls=self.tls,
                crt=certs / "server-haproxy.pem"),
            "meshproxy-tls": lambda: self.start_meshproxy(
                "meshproxy-tls", MESHPROXY_TLS_CONF, ports["meshproxy-tls"],
                ports["meshproxy-tls-admin"], nginxport=nginx, certs=certs),
            "haproxy-in": lambda: self.start_haproxy(
                "haproxy-in", HAPROXY_IN_CONF, ports["haproxy-in"], nginx, tls=self.mtls,
                crt=certs / "server-haproxy.pem", ca=certs / "ca.pem"),
            "haproxy-out": lambda: self.start_haproxy(
                "haproxy-out", HAPROXY_OUT_CONF, ports["haproxy-out"], ports["haproxy-in"],
                crt=certs / "web-haproxy.pem", ca=certs / "ca.pem"),
            "meshproxy-in": lambda: self.start_meshproxy(
                "meshproxy-in", MESHPROXY_IN_CONF, ports["meshproxy-in"],
                ports["meshproxy-in-admin"], nginxport=nginx, certs=certs),
            "meshproxy-out": lambda: self.start_meshproxy(
                "meshproxy-out", MESHPROXY_OUT_CONF, ports["meshproxy-out"],
                ports["meshproxy-out-admin"], inport=ports["meshproxy-in"], certs=certs),
            "meshproxy-trace1": lambda: self.start_meshproxy(
                "meshproxy-trace1", TRACING_CONF, ports["meshproxy-trace1"],
                ports["meshproxy-trace1-admin"], nginxport=nginx, rate="0.01",
                receiverport=ports.get("receiver"), batchsize=self.args.trace_batch),
            "meshproxy-trace100": lambda: self.start_meshproxy(
                "meshproxy-trace100", TRACING_CONF, ports["meshproxy-trace100"],
                ports["meshproxy-trace100-admin"], nginxport=nginx, rate="1.0",
                receiverport=ports.get("receiver"), batchsize=self.args.trace_batch),
            "meshproxy-log": lambda: self.start_meshproxy(
                "meshproxy-log", ACCESS_LOG_CONF, ports["meshproxy-log"],
                ports["meshproxy-log-admin"], nginxport=nginx,
                logpath=self.tmp / "access.log"),
            "meshproxy-rr": lambda: self.start_meshproxy(
                "meshproxy-rr", RR_CONF, ports["meshproxy-rr"],
                ports["meshproxy-rr-admin"], nginxport=nginx),
            "meshproxy-noaccrual": lambda: self.start_meshproxy(
                "meshproxy-noaccrual", NO_ACCRUAL_CONF, ports["meshproxy-noaccrual"],
                ports["meshproxy-noaccrual-admin"], nginxport=nginx),
            "meshproxy-busypoll": lambda: self.start_meshproxy(
                "meshproxy-busypoll", BUSYPOLL_CONF, ports["meshproxy-busypoll"],
                ports["meshproxy-busypoll-admin"], nginxport=nginx),
            "haproxy-h2up": lambda: self.start_haproxy(
                "haproxy-h2up", HAPROXY_H2UP_CONF, ports["haproxy-h2up"], ports["nginx-h2"],
                h2=True),
            "meshproxy-h2up": lambda: self.start_meshproxy(
                "meshproxy-h2up", MESHPROXY_H2UP_CONF, ports["meshproxy-h2up"],
                ports["meshproxy-h2up-admin"], nginxport=ports["nginx-h2"]),
            "haproxy-t2": lambda: self.start_haproxy(
                "haproxy-t2", HAPROXY_T2_CONF, ports["haproxy-t2"], nginx, cpu="wide"),
            "meshproxy-w2": lambda: self.start_meshproxy(
                "meshproxy-w2", MESHPROXY_W2_CONF, ports["meshproxy-w2"],
                ports["meshproxy-w2-admin"], nginxport=nginx, cpu="wide"),
            "haproxy-l4": lambda: self.start_haproxy(
                "haproxy-l4", HAPROXY_L4_CONF, ports["haproxy-l4"], nginx),
            "meshproxy-l4": lambda: self.start_meshproxy(
                "meshproxy-l4", MESHPROXY_L4_CONF, ports["meshproxy-l4"],
                ports["meshproxy-l4-admin"], nginxport=nginx),
            "haproxy-l4-sni": lambda: self.start_haproxy(
                "haproxy-l4-sni", HAPROXY_L4_SNI_CONF, ports["haproxy-l4-sni"],
                ports["nginx-tls"], tls=self.tls, hostname="localhost"),
            "meshproxy-l4-sni": lambda: self.start_meshproxy(
                "meshproxy-l4-sni", MESHPROXY_L4_SNI_CONF, ports["meshproxy-l4-sni"],
                ports["meshproxy-l4-sni-admin"], nginxport=ports.get("nginx-tls")),
        }
        for name, start in starts.items():
            if name in needed:
                proc = start()
                self.pids[name] = proc.pid
                meta["affinity"][name] = allowed_cpus(proc.pid)

    def check_alive(self):
        for proc in self.procs:
            if not proc.alive():
                raise HarnessError(f"{proc.name} {proc.describe_exit()} during the benchmark",
                                   [proc])

    def sanity_check(self, target):
        spec = SPECS[target]
        port = self.ports[spec.server]
        if spec.streams is not None:
            if not self.h2_get(port):
                raise HarnessError(f"sanity request to {target} (GET / over HTTP/2 with "
                                   f":authority {HOST_HEADER}) was not answered 2xx", self.procs)
            return
        try:
            status, body = http_get(port, timeout=5.0,
                                    tls=self.tls if spec.scheme == "https" else None,
                                    hostname=spec.hostname)
        except (OSError, http.client.HTTPException) as e:
            raise HarnessError(f"sanity request to {target} failed: {type(e).__name__}: {e}",
                               self.procs) from e
        if status != 200 or body != EXPECTED_BODY:
            raise HarnessError(
                f"sanity request to {target} (GET / with Host: {HOST_HEADER}) got HTTP "
                f"{status} {body[:200]!r}, expected 200 {EXPECTED_BODY!r}", self.procs)

    # -- measuring

    def wrk(self, target, threads, connections, duration):
        """
        Run wrk once against C{target}, measuring the proxy's CPU time around it.

        @return: the parsed result (see L{parse_wrk}) plus CPU figures.
        """
        spec = SPECS[target]
        host = spec.hostname or LOOPBACK
        url = f"{spec.scheme}://{host}:{self.ports[spec.server]}{spec.path}"
        assert url.startswith((f"http://{host}:", f"https://{host}:")), url
        # Connection: close makes every request a new connection; over https
        # wrk resumes the slot's previous TLS session (it keeps it across
        # SSL_clear), so these are resumed handshakes.
        close = ["-H", "Connection: close"] if spec.close else []
        argv = self.pinned("load", [
            self.tools["wrk"], f"-t{threads}", f"-c{connections}", f"-d{duration}s",
            "--latency", "-H", f"Host: {HOST_HEADER}", *close, url])
        out, err, wall, cpu = self.load("wrk", argv, spec, duration, target)
        try:
            result = parse_wrk(out)
        except ValueError as e:
            raise HarnessError(f"cannot parse wrk output for {target}: {e}\n{out}{err}") from e
        result["wrk_argv"] = argv
        return _withCpu(result, cpu, wall)

    def load(self, tool, argv, spec, duration, target):
        """
        Run one load generator to its end, and time it.

        @param tool: its name, for errors.
        @param argv: its command line.
        @param spec: the target's L{Target}: the servers whose CPU counts.
        @return: C{(stdout, stderr, wall seconds, the servers' CPU seconds
            or L{None} for a target without a proxy)}.
        """
        pids = [self.pids[server] for server in spec.servers]
        cpu_before = sum(tree_cpu_seconds(p) for p in pids) if pids else None
        wall_before = time.monotonic()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=duration + 30)
        except BaseException:
            # Timeout or Ctrl-C: the tool is in its own session, so stop it here.
            proc.kill()
            proc.wait()
            raise
        wall = time.monotonic() - wall_before
        cpu = sum(tree_cpu_seconds(p) for p in pids) - cpu_before if pids else None
        if proc.returncode != 0:
            raise HarnessError(f"{tool} against {target} exited with status {proc.returncode}:"
                               f"\n{out}{err}")
        return out, err, wall, cpu

    def handshakes(self, target, duration):
        """
        Run C{--handshake-clients} C{openssl s_time -new} loops at once
        against C{target} for C{duration} seconds: each connects, makes a
        full TLS handshake (no session resumed, no certificate verified),
        closes, and again. Measures the proxy's CPU time around them.

        @return: a result shaped like L{wrk}'s: C{rps} is handshakes per
            second (all loops' connections over the wall time), no latency.
        """
        spec = SPECS[target]
        address = f"{LOOPBACK}:{self.ports[spec.server]}"
        argv = self.pinned("load", [self.tools["openssl"], "s_time", "-connect", address,
                                      "-new", "-time", str(duration)])
        pids = [self.pids[server] for server in spec.servers]
        cpu_before = sum(cpu_seconds(p) for p in pids)
        wall_before = time.monotonic()
        procs = [subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT, text=True, start_new_session=True)
                 for _ in range(self.args.handshake_clients)]
        outputs = []
        try:
            for proc in procs:
                out, _ = proc.communicate(timeout=duration + 30)
                outputs.append((proc.returncode, out))
        except BaseException:
            for proc in procs:
                proc.kill()
                proc.wait()
            raise
        wall = time.monotonic() - wall_before
        cpu = sum(cpu_seconds(p) for p in pids) - cpu_before
        connections = 0
        for rc, out in outputs:
            # "2295 connections in 3 real seconds, 0 bytes read per connection"
            done = re.search(r"^(\d+) connections in \d+ real seconds", out, re.M)
            if rc != 0 or done is None:
                raise HarnessError(f"openssl s_time against {target} exited with status {rc}:"
                                   f"\n{out[-2000:]}")
            connections += int(done.group(1))
        result = {
            "rps": connections / wall,
            "requests": connections,
            "elapsed_s": round(wall, 3),
            "p50_ms": None, "p75_ms": None, "p90_ms": None, "p99_ms": None,
            "errors": {}, "error_total": 0,
            "s_time_argv": argv, "s_time_clients": len(procs),
            "proxy_cpu_s": round(cpu, 3),
            "proxy_cpu_util": round(cpu / wall, 3),
            "cpu_us_per_req": cpu * 1e6 / connections if connections else None,
        }
        result["flagged"] = not connections
        return result

    def h2load(self, target, duration):
        """
        Run h2load once against C{target} (h2c, C{spec.streams} concurrent
        streams per connection), measuring the proxy's CPU time around it.
        The latency percentiles come from h2load's per-request log.

        @return: a result shaped like L{wrk}'s.
        """
        spec = SPECS[target]
        args = self.args
        connections = args.connections if spec.streams == 1 else args.h2_connections
        url = f"http://{LOOPBACK}:{self.ports[spec.server]}/"
        log = self.tmp / "h2load-requests.log"
        argv = self.pinned("load", [
            self.tools["h2load"], "-c", str(connections), "-m", str(spec.streams),
            "-t", str(min(args.threads, connections)), "-D", str(duration),
            "-H", f":authority: {HOST_HEADER}", f"--log-file={log}", url])
        out, err, wall, cpu = self.load("h2load", argv, spec, duration, target)
        try:
            result = parse_h2load(out, log.read_text() if log.exists() else "")
        except ValueError as e:
            raise HarnessError(f"cannot parse h2load output for {target}: {e}\n{out}{err}") from e
        log.unlink(missing_ok=True)
        result["h2load_argv"] = argv
        return _withCpu(result, cpu, wall)

    def measure(self, target, threads, connections, label):
        """Warm up, then measure; print a progress line."""
        if SPECS[target].streams is not None:
            if self.args.warmup > 0:
                self.h2load(target, self.args.warmup)
            result = self.h2load(target, self.args.duration)
            self.check_alive()
            say(f"  {label} {target:<18} {result['rps']:>10,.0f} rps  p50 "
                f"{fmt_ms(result['p50_ms'])} ms  p99 {fmt_ms(result['p99_ms'])} ms"
                f"  {fmt_num(result['cpu_us_per_req'], '.1f')} CPU us/req"
                + (f"  ERRORS {result['errors']}" if result["flagged"] else ""))
            return result
        spec = SPECS[target]
        threads = spec.threads or threads
        connections = spec.connections or connections
        if SPECS[target].handshakes:
            if self.args.warmup > 0:
                self.handshakes(target, self.args.warmup)
            result = self.handshakes(target, self.args.duration)
            self.check_alive()
            say(f"  {label} {target:<18} {result['rps']:>10,.0f} handshakes/s"
                f"  {result['cpu_us_per_req']:.1f} CPU us/handshake")
            return result
        if self.args.warmup > 0:
            self.wrk(target, threads, connections, self.args.warmup)
        result = self.wrk(target, threads, connections, self.args.duration)
        self.check_alive()
        cpu = result["cpu_us_per_req"]
        if spec.transfer:
            say(f"  {label} {target:<18} {fmt_mb(result['bytes_per_s']):>10} MB/s"
                f"  {result['proxy_cpu_util'] * 100:.0f}% proxy CPU"
                + (f"  ERRORS {result['errors']}" if result["flagged"] else ""))
            return result
        say(f"  {label} {target:<18} {result['rps']:>10,.0f} rps  p50 {fmt_ms(result['p50_ms'])} ms"
            f"  p99 {fmt_ms(result['p99_ms'])} ms"
            + (f"  {cpu:.1f} CPU us/req" if cpu is not None else "")
            + (f"  ERRORS {result['errors']}" if result["flagged"] else ""))
        return result

    def run(self):
        args = self.args
        self.results["meta"] = self.meta()
        meta = self.results["meta"]
        if args.hold:
            # Before the servers start: they inherit the limit.
            limit = raise_nofile(args.hold + 1024)
            if limit < args.hold + 64:
                say(f"note: only {limit} open files allowed (RLIMIT_NOFILE); --hold"
                    f" {args.hold} will fail to open some connections")
        self.start_servers()
        for target in args.only:
            self.sanity_check(target)
        say("servers up, sanity requests answered 200 'hello\\n'; CPU affinity: "
            + ", ".join(f"{k} {v}" for k, v in meta["affinity"].items()))

        memory = self.results["meshproxy_memory"]
        if "meshproxy" in self.pids:
            memory["before"] = memory_kib(self.pids["meshproxy"])
            memory["before"].update(smaps_kib(self.pids["meshproxy"]))
        if "meshproxy-w2" in self.pids:
            self.results["workers_memory"] = {"idle": self.tree_memory("meshproxy-w2")}

        for run in range(1, args.runs + 1):
            say(f"run {run}/{args.runs}: wrk -t{args.threads} -c{args.connections} "
                f"-d{args.duration}s (after a {args.warmup} s warm-up)")
            for target in args.only:
                result = self.measure(target, args.threads, args.connections, f"[{run}]")
                result["run"] = run
                self.results["targets"][target]["runs"].append(result)

        if "meshproxy" in self.pids:
            memory["after_load"] = memory_kib(self.pids["meshproxy"])

        moved = self.onLoadCPU() if args.c1_one_cpu and args.c1_runs else {}
        for run in range(1, args.c1_runs + 1):
            say(f"concurrency 1, run {run}/{args.c1_runs}: wrk -t1 -c1 -d{args.duration}s")
            for target in args.only:
                if (SPECS[target].handshakes or SPECS[target].streams is not None
                        or SPECS[target].transfer):
                    # No request, no latency (handshakes); HTTP/2, whose
                    # one-at-a-time figure is the -m 1 target's own; or a
                    # transfer's throughput.
                    continue
                result = self.measure(target, 1, 1, f"[c1 {run}]")
                result["run"] = run
                self.results["targets"][target]["c1_runs"].append(result)
        for pid, cpus in moved.items():
            try:
                os.sched_setaffinity(pid, cpus)
            except OSError:
                pass

        if "meshproxy" in self.pids:
            memory["end"] = memory_kib(self.pids["meshproxy"])
            if args.churn:
                say(f"connection churn: {args.churn} connections opened, used once and closed")
                churn = memory["churn"] = {"connections": args.churn}
                churn["before"] = memory_kib(self.pids["meshproxy"])
                churn["failed"] = connection_churn(self.ports["meshproxy"], args.churn)
                churn["after"] = memory_kib(self.pids["meshproxy"])
        if "meshproxy-w2" in self.pids:
            self.results["workers_memory"]["after_load"] = self.tree_memory("meshproxy-w2")
        if args.hold:
            self.hold()
        if "receiver" in self.ports:
            status, body = http_get(self.ports["receiver"], "/")
            self.results["spans_received"] = int(body)
        if "meshproxy-log" in self.pids:
            log = self.tmp / "access.log"
            self.results["access_log_lines"] = (
                sum(1 for _ in log.open("rb")) if log.exists() else 0)
        self.summarize()

    def onLoadCPU(self):
        """
        Move every proxy process (and its workers) onto the load CPU, beside
        nginx and wrk, for the concurrency-1 runs of C{--c1-one-cpu}.

        @return: each process moved, with the CPUs to give it back.
        """
        moved = {}
        if not self.args.pin:
            return moved
        load = cpu_list(self.args.cpus["load"])
        for pid in self.pids.values():
            for member in process_tree(pid):
                try:
                    moved[member] = os.sched_getaffinity(member)
                    os.sched_setaffinity(member, load)
                except OSError:
                    moved.pop(member, None)
        self.results["meta"]["c1_layout"] = f"every process on CPU {self.args.cpus['load']}"
        return moved

    def tree_memory(self, server):
        """
        The RSS and USS of each process of C{server}'s tree: the supervisor,
        the zygote, the workers.
        """
        return [{"pid": p, **smaps_kib(p)} for p in process_tree(self.pids[server])]

    def hold(self):
        """
        Hold C{--hold} connections to each meshproxy (one worker, and two
        when measured), from the load CPU: memory per idle connection, then
        a steady request rate through them (L{hold_connections}).
        """
        args = self.args
        held = self.results["hold"] = {}
        affinity = os.sched_getaffinity(0)
        if args.pin:
            os.sched_setaffinity(0, cpu_list(args.cpus["load"]))
        try:
            for target in ("meshproxy", "meshproxy-w2"):
                if target not in self.pids:
                    continue
                say(f"holding {args.hold} connections to {target}: one request every "
                    f"{args.hold_interval:g} s on each for {args.hold_duration:g} s")
                held[target] = hold_connections(
                    self.ports[target], self.pids[target], args.hold, args.hold_interval,
                    args.hold_duration)
                self.check_alive()
        finally:
            os.sched_setaffinity(0, affinity)

    def meta(self):
        args = self.args
        meta = {
            "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "host": platform.node(),
            "kernel": platform.release(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": os.getloadavg(),
            "pinned": args.pin,
            "layout": (f"proxy on CPU {args.cpus['proxy']}; nginx and wrk on CPU"
                       f" {args.cpus['load']}"
                       + (f"; -w2 and -t2 on CPUs {args.cpus['wide']}"
                          if set(WORKER_TARGETS) & set(args.only) else "")
                       if args.pin else "unpinned"),
            "args": {k: v for k, v in vars(args).items()},
            "versions": self.versions(),
            "git": git_describe(),
        }
        return meta

    def versions(self):
        def first_line(argv):
            try:
                p = subprocess.run(argv, capture_output=True, text=True, timeout=10,
                                   cwd=REPO_ROOT)
            except (OSError, subprocess.TimeoutExpired) as e:
                return f"? ({e})"
            lines = (p.stdout + p.stderr).strip().splitlines()
            return lines[0].strip() if lines else "?"
        versions = {
            "nginx": first_line([self.tools["nginx"], "-v"]),
            "haproxy": first_line([self.tools["haproxy"], "-v"]),
            "wrk": first_line([self.tools["wrk"], "-v"]),
            **({"h2load": first_line([self.tools["h2load"], "--version"])}
               if "h2load" in self.tools else {}),
            "harness_python": sys.version.split()[0],
        }
        if any(SPECS[t].server.startswith("meshproxy") for t in self.args.only):
            versions["meshproxy_python"] = first_line([
                self.args.python, "-c",
                "import sys, platform, twisted; print(platform.python_implementation(),"
                " sys.version.split()[0], 'Twisted', twisted.__version__)"])
        return versions

    def summarize(self):
        res = self.results
        for target in self.args.only:
            for kind, key in (("runs", "summary"), ("c1_runs", "c1_summary")):
                runs = res["targets"][target][kind]
                if not runs:
                    continue
                res[key][target] = {
                    "rps": median(r["rps"] for r in runs),
                    "p50_ms": median(r["p50_ms"] for r in runs),
                    "p99_ms": median(r["p99_ms"] for r in runs),
                    "cpu_us_per_req": median(r["cpu_us_per_req"] for r in runs),
                    "bytes_per_s": median(r.get("bytes_per_s") for r in runs),
                    "rps_spread": (
                        (max(r["rps"] for r in runs) - min(r["rps"] for r in runs))
                        / median(r["rps"] for r in runs)
                        if median(r["rps"] for r in runs) else None),
                    "errors": sum(r["error_total"] for r in runs),
                    "flagged_runs": sum(1 for r in runs if r["flagged"]),
                    "runs": len(runs),
                }
        summary = res["summary"]
        for a, b in RATIOS:
            if a in summary and b in summary:
                res["ratios"][f"{a}/{b}"] = {
                    key: ratio(summary[a][key], summary[b][key])
                    for key in ("rps", "p50_ms", "p99_ms", "cpu_us_per_req", "bytes_per_s")
                }
        c1 = res["c1_summary"]
        for a, b in RATIOS:
            if a in c1 and b in c1 and c1[a]["p50_ms"] is not None and c1[b]["p50_ms"] is not None:
                res["c1_added_p50_us"][f"{a} over {b}"] = (c1[a]["p50_ms"] - c1[b]["p50_ms"]) * 1e3


def git_describe():
    """Return the checkout's commit and whether it has local changes (read-only)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=REPO_ROOT, capture_output=True, text=True,
                               timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return None
    return {"commit": head or None, "dirty": bool(dirty)}


# --- output ---------------------------------------------------------------


def fmt_ms(value):
    return "–" if value is None else f"{value:.2f}"


def fmt_num(value, spec):
    return "–" if value is None else format(value, spec)


def fmt_mb(value):
    return "–" if value is None else f"{value / 1e6:,.0f}"


def fmt_ratio(value):
    if value is None:
        return "–"
    return f"{value:.2f}x" if value >= 0.1 else f"{value:.3f}x"


def print_report(results, args, out=sys.stdout):
    """Print the human-readable report of L{Bench.results}."""
    def p(line=""):
        print(line, file=out)

    meta = results["meta"]
    p()
    p(f"meshproxy bench: {args.runs} run(s) x {args.duration} s, wrk -t{args.threads} "
      f"-c{args.connections} --latency, {args.warmup} s warm-up; {meta['layout']}; "
      f"{meta['cpus']} CPUs, load average at start {meta['loadavg_at_start'][0]:.2f}")
    p("medians over runs; only ratios from the same invocation are comparable across machines")
    p()
    header = (f"{'target':<18} {'median rps':>11} {'p50 ms':>8} {'p99 ms':>8} "
              f"{'CPU µs/req':>11} {'errors':>8}")
    p(header)
    p("-" * len(header))
    for target in args.only:
        s = results["summary"].get(target)
        if not s:
            continue
        errors = str(s["errors"]) + (f" ({s['flagged_runs']} run(s) flagged)"
                                     if s["flagged_runs"] else "")
        p(f"{target:<18} {fmt_num(s['rps'], ',.0f'):>11} {fmt_ms(s['p50_ms']):>8} "
          f"{fmt_ms(s['p99_ms']):>8} {fmt_num(s['cpu_us_per_req'], '.1f'):>11} {errors:>8}")

    if any(t in H2_TARGETS for t in args.only):
        p("(-h2: h2load with HTTP/2 prior knowledge (h2c), one stream at a time on each of"
          f" {args.connections} connections; -h2-m100: 100 concurrent streams on each of"
          f" {args.h2_connections} connections; HAProxy's frontend is `proto h2`, meshproxy's is"
          " its HTTP listener; both speak HTTP/1.1 to nginx)")
    if any(t in H2UP_TARGETS for t in args.only):
        p("(-h2up: HTTP/2 end to end, h2load (h2c) to nginx's h2c server: directly, through"
          " HAProxy (`proto h2` both sides) and through meshproxy (`upstreamProtocol: h2`); one"
          f" stream at a time on each of {args.connections} connections, -m100: 100 concurrent"
          f" streams on each of {args.h2_connections})")
    transfers = [t for t in args.only if SPECS[t].transfer and results["summary"].get(t)]
    if transfers:
        p()
        p(f"{'large transfers':<18} {'median MB/s':>11} {'proxy CPU':>10}")
        for target in transfers:
            runs = results["targets"][target]["runs"]
            util = median(r["proxy_cpu_util"] for r in runs)
            p(f"{target:<18} {fmt_mb(results['summary'][target]['bytes_per_s']):>11} "
              f"{fmt_num(util and util * 100, '.0f'):>9}%")
        p(f"(a {BIG_FILE_BYTES // 2 ** 20} MiB file from nginx: big1 one stream, wrk -t1 -c1;"
          " big8 eight, wrk -t2 -c8; MB = 10^6 bytes)")
    if any(t in L4_TARGETS for t in args.only):
        p("(-l4-cps: new connection per request through a TCP router, meshproxy routing by"
          " rules; -l4-sni: the same over TLS, routed by the ClientHello's server name and"
          " passed through to nginx)")
    if any(t in TLS_TARGETS for t in args.only):
        p("(-tls: TLS terminated on keep-alive connections; -tls-hs: Connection: close, a new"
          " connection per request, its TLS session resumed by wrk; -tls-full: full TLS"
          f" handshakes/s from {args.handshake_clients} openssl s_time -new loops, no request,"
          " CPU per handshake; -mtls: an outbound proxy originating mTLS to an inbound one,"
          " both on the proxy CPU, CPU of both)")
    for target in args.only:
        s = results["summary"].get(target)
        if s and s["runs"] > 1 and s["rps_spread"] is not None and s["rps_spread"] > 0.10:
            rps = [r["rps"] for r in results["targets"][target]["runs"]]
            p(f"note: {target} rps varied by {s['rps_spread']:.0%} of the median across runs "
              f"({min(rps):,.0f}-{max(rps):,.0f}): the machine was busy; consider rerunning")

    if results["ratios"]:
        p()
        p(f"{'ratio of medians':<36} {'rps':>7} {'p50':>7} {'p99':>7} {'CPU/req':>8} {'MB/s':>7}")
        for name, r in results["ratios"].items():
            p(f"{name:<36} {fmt_ratio(r['rps']):>7} {fmt_ratio(r['p50_ms']):>7} "
              f"{fmt_ratio(r['p99_ms']):>7} {fmt_ratio(r['cpu_us_per_req']):>8} "
              f"{fmt_ratio(r.get('bytes_per_s')):>7}")
        p("(rps below 1x = fewer requests/s than the baseline; latency and CPU above 1x = worse)")
    w2 = results["ratios"].get("meshproxy-w2/haproxy-t2")
    w1 = results["ratios"].get("meshproxy/haproxy")
    if w1 and w2 and w1["rps"] and w2["rps"]:
        p(f"workers: (meshproxy-w2/haproxy-t2) / (meshproxy/haproxy) = "
          f"{w2['rps'] / w1['rps']:.2f} in rps, "
          f"{fmt_ratio(ratio(w2['cpu_us_per_req'], w1['cpu_us_per_req']))} in CPU/req"
          " (goal: within 10% of 1.00; -w2 and -t2 share both CPUs with nginx and wrk)")
    if "spans_received" in results:
        p(f"spans received by the bench's Zipkin receiver: {results['spans_received']:,}")
    if "access_log_lines" in results:
        p(f"access log lines written: {results['access_log_lines']:,}")

    if results["c1_summary"]:
        p()
        layout = results["meta"].get("c1_layout")
        p(f"concurrency 1 (wrk -t1 -c1 -d{args.duration}s, median of {args.c1_runs}"
          + (f"; {layout}" if layout else "") + "):")
        for target in args.only:
            s = results["c1_summary"].get(target)
            if s:
                flag = f"  errors {s['errors']}" if s["errors"] else ""
                p(f"  {target:<18} p50 {fmt_num(s['p50_ms'] and s['p50_ms'] * 1e3, '.0f'):>6} µs"
                  f"  p99 {fmt_num(s['p99_ms'] and s['p99_ms'] * 1e3, '.0f'):>6} µs"
                  f"  {fmt_num(s['rps'], ',.0f'):>8} rps{flag}")
        for name, added in results["c1_added_p50_us"].items():
            p(f"  p50 added by {name}: {added:+.0f} µs")

    memory = results["meshproxy_memory"]
    if memory:
        def mib(kib):
            return f"{kib / 1024:.1f} MiB"
        parts = [f"before load {mib(memory['before']['rss_kib'])}"]
        if "after_load" in memory:
            parts.append(f"after load {mib(memory['after_load']['rss_kib'])}")
        if "end" in memory:
            parts.append(f"at end {mib(memory['end']['rss_kib'])}"
                         f" (peak {mib(memory['end']['peak_rss_kib'])})")
        p()
        p("meshproxy RSS: " + ", ".join(parts))
        churn = memory.get("churn")
        if churn:
            before = churn["before"]["rss_kib"]
            after = churn["after"]["rss_kib"]
            growth = (after - before) / before * 100
            p(f"connection churn: {churn['connections']} connections, {churn['failed']} failed; "
              f"RSS {mib(before)} before, {mib(after)} after ({growth:+.1f}%)")

    for target, h in results.get("hold", {}).items():
        p()
        connected = max(1, h["connected"])
        p(f"{target}: {h['opened']:,} of {h['connections']:,} keep-alive connections held:"
          f" RSS {h['rss_before_kib'] / 1024:.1f} MiB before, "
          f"{h['rss_connected_kib'] / 1024:.1f} connected"
          f" ({(h['rss_connected_kib'] - h['rss_before_kib']) / connected:.2f} KiB each),"
          f" {h['rss_held_kib'] / 1024:.1f} after one request on each"
          f" ({h['kib_per_connection']:.2f} KiB each; goal: <= 4)")
        p(f"  then one request per connection every {h['interval_s']:g} s for"
          f" {h['duration_s']:g} s: {h['requests']:,} requests ({h['rps']:,.0f}/s, proxy CPU"
          f" {h['proxy_cpu_util'] * 100:.0f}%), p50"
          f" {fmt_ms(h['p50_ms'])} p90 {fmt_ms(h['p90_ms'])} p99 {fmt_ms(h['p99_ms'])}"
          f" p99.9 {fmt_ms(h['p999_ms'])} max {fmt_ms(h['max_ms'])} ms, errors"
          f" {h['errors'] or 0}")
    if memory.get("before", {}).get("uss_kib"):
        p(f"meshproxy idle (before load): RSS {memory['before']['rss_kib'] / 1024:.1f} MiB,"
          f" USS {memory['before']['uss_kib'] / 1024:.1f} MiB")
    for when, processes in results.get("workers_memory", {}).items():
        p(f"meshproxy-w2 {when.replace('_', ' ')}, RSS / USS of supervisor, zygote, workers: "
          + ", ".join(f"{m['rss_kib'] / 1024:.1f} / {m['uss_kib'] / 1024:.1f}"
                      for m in processes) + " MiB")
    p()
    p("individual runs:")
    header = (f"{'run':<6} {'target':<18} {'rps':>9} {'p50 ms':>7} {'p99 ms':>7} "
              f"{'requests':>10} {'proxy CPU':>9} {'µs/req':>7}  errors")
    p(header)
    for kind, label in (("runs", ""), ("c1_runs", "c1 ")):
        for target in args.only:
            for r in results["targets"][target][kind]:
                util = ("–" if r["proxy_cpu_util"] is None
                        else f"{r['proxy_cpu_util'] * 100:.0f}%")
                errors = ("0" if not r["error_total"] else
                          "! " + ", ".join(f"{k} {v}" for k, v in r["errors"].items() if v))
                if not r["requests"]:
                    errors = "! no requests completed"
                p(f"{label + str(r['run']):<6} {target:<18} {r['rps']:>9,.0f} "
                  f"{fmt_ms(r['p50_ms']):>7} {fmt_ms(r['p99_ms']):>7} "
                  f"{fmt_num(r['requests'], ','):>10} {util:>9} "
                  f"{fmt_num(r['cpu_us_per_req'], '.1f'):>7}  {errors}")
    p("(proxy CPU = the proxy process's CPU time / wall time during the run; "
      "~100% pinned means the proxy core was saturated)")


# --- command line ---------------------------------------------------------


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark meshproxy against HAProxy and direct nginx on loopback "
                    "(see bench/README.md).")
    parser.add_argument("--runs", type=int, default=3, help="load runs per target (default 3)")
    parser.add_argument("--duration", type=int, default=10, help="seconds per run (default 10)")
    parser.add_argument("--warmup", type=int, default=2,
                        help="seconds of warm-up before each run, 0 for none (default 2)")
    parser.add_argument("--connections", type=int, default=50, help="wrk -c (default 50)")
    parser.add_argument("--threads", type=int, default=2, help="wrk -t (default 2)")
    parser.add_argument("--c1-runs", type=int, default=1,
                        help="concurrency-1 runs per target, 0 for none (default 1)")
    parser.add_argument("--c1-one-cpu", action="store_true",
                        help="for the concurrency-1 runs, move the proxies onto the load CPU"
                             " beside nginx and wrk: the latency a proxy adds without"
                             " waking another CPU")
    parser.add_argument("--pin", action=argparse.BooleanOptionalAction, default=None,
                        help="proxy on --proxy-cpus, nginx and wrk on --load-cpus "
                             "(default: on with 2 or more CPUs)")
    parser.add_argument("--load-cpus", default=LOAD_CPU, metavar="LIST",
                        help=f"CPUs of nginx and the load generators (default {LOAD_CPU})")
    parser.add_argument("--proxy-cpus", default=PROXY_CPU, metavar="LIST",
                        help=f"CPUs of a proxy under test (default {PROXY_CPU})")
    parser.add_argument("--wide-cpus", default=WIDE_CPUS, metavar="LIST",
                        help="CPUs of meshproxy-w2 and haproxy-t2 (default "
                             f"{WIDE_CPUS}; on a larger machine, two CPUs apart from"
                             " --load-cpus)")
    parser.add_argument("--only", default=",".join(TARGETS),
                        help="comma-separated subset of " + ",".join(ALL_TARGETS)
                             + " (default: " + ",".join(TARGETS) + ")")
    parser.add_argument("--tls", action="store_true",
                        help="also measure the TLS targets: " + ",".join(TLS_TARGETS))
    parser.add_argument("--l4", action="store_true",
                        help="also measure the layer-4 targets (TCP routers against HAProxy"
                             " mode tcp): " + ",".join(L4_TARGETS))
    parser.add_argument("--telemetry", action="store_true",
                        help="add meshproxy with tracing at 1%% and 100%% sampling (to a local"
                             " receiver) and with the access log on, as ratios to meshproxy")
    parser.add_argument("--trace-batch", type=int, default=256, metavar="SPANS",
                        help="telemetry.tracing.batch.size of the tracing targets (default 256,"
                             " the config's default): what a post costs, spread over its spans")
    parser.add_argument("--features", action="store_true",
                        help="add meshproxy with round robin in place of peak EWMA, with"
                             " no failure accrual and with busyPoll: 0.1ms, beside meshproxy: "
                             + ",".join(FEATURE_TARGETS))
    parser.add_argument("--h2", action="store_true",
                        help="also measure the HTTP/2 targets (h2load): " + ",".join(H2_TARGETS))
    parser.add_argument("--h2up", action="store_true",
                        help="also measure HTTP/2 to upstreams (h2load to nginx h2c): "
                             + ",".join(H2UP_TARGETS))
    parser.add_argument("--h2-connections", type=int, default=4, metavar="C",
                        help="h2load -c of the *-h2-m100 targets (default 4)")
    parser.add_argument("--handshake-clients", type=int, default=8, metavar="K",
                        help="parallel openssl s_time loops of the *-tls-full targets "
                             "(default 8)")
    parser.add_argument("--json", metavar="FILE", help="also write all results as JSON")
    parser.add_argument("--churn", type=int, default=10000, metavar="N",
                        help="after the load runs, open and close N connections to meshproxy "
                             "(one GET each) and report its RSS before and after "
                             "(default 10000; 0 skips)")
    parser.add_argument("--workers", action="store_true",
                        help="also measure meshproxy with 2 worker processes against HAProxy with"
                             " nbthread 2 (and meshproxy/haproxy, the 1-worker pair): "
                             + ",".join(WORKER_TARGETS))
    parser.add_argument("--hold", type=int, default=0, metavar="N",
                        help="after the load runs, hold N keep-alive connections to meshproxy"
                             " (and meshproxy-w2): RSS per idle connection, then one request"
                             " per connection every --hold-interval s for --hold-duration s"
                             " (default 0: skip)")
    parser.add_argument("--hold-interval", type=float, default=5.0, metavar="S",
                        help="seconds between two requests on one held connection (default 5)")
    parser.add_argument("--hold-duration", type=float, default=20.0, metavar="S",
                        help="seconds of the steady phase of --hold (default 20)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs, logs)")
    parser.add_argument("--python", default=sys.executable,
                        help="interpreter that runs meshproxy under twistd "
                             "(default: this one, %(default)s)")
    parser.add_argument("--meshproxy-config", metavar="TEMPLATE",
                        help="meshproxy config template with $port, $adminport, $nginxport "
                             "and $loopback placeholders (default: built in)")
    parser.add_argument("--ready-timeout", type=float, default=10.0,
                        help="seconds to wait for each server to answer (default 10)")
    args = parser.parse_args(argv)

    only = [t.strip() for t in args.only.split(",") if t.strip()]
    unknown = sorted(set(only) - set(ALL_TARGETS))
    if unknown or not only:
        parser.error(f"--only takes a comma-separated subset of {','.join(ALL_TARGETS)}"
                     + (f"; unknown: {','.join(unknown)}" if unknown else ""))
    if args.tls:
        only += TLS_TARGETS
    if args.telemetry:
        only += ["meshproxy", *TELEMETRY_TARGETS]
    if args.features:
        only += ["meshproxy", *FEATURE_TARGETS]
    if args.h2:
        only += H2_TARGETS
    if args.h2up:
        only += H2UP_TARGETS
    if args.l4:
        only += L4_TARGETS
    if args.workers:
        only += ["haproxy", "meshproxy", *WORKER_TARGETS]
    if args.hold and not {"meshproxy", "meshproxy-w2"} & set(only):
        only.append("meshproxy")
    args.only = [t for t in ALL_TARGETS if t in only]
    for name in ("load_cpus", "proxy_cpus", "wide_cpus"):
        if not re.fullmatch(r"\d+(-\d+)?(,\d+(-\d+)?)*", getattr(args, name)):
            parser.error(f"--{name.replace('_', '-')} takes a CPU list such as 0 or 2,3 or 2-5")
    args.cpus = {"load": args.load_cpus, "proxy": args.proxy_cpus, "wide": args.wide_cpus}
    for name in ("runs", "duration", "connections", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be at least 1")
    if args.hold < 0 or args.hold_interval <= 0 or args.hold_duration <= 0:
        parser.error("--hold cannot be negative, --hold-interval and --hold-duration must be"
                     " positive")
    if args.handshake_clients < 1:
        parser.error("--handshake-clients must be at least 1")
    if args.h2_connections < 1:
        parser.error("--h2-connections must be at least 1")
    if args.warmup < 0 or args.c1_runs < 0:
        parser.error("--warmup and --c1-runs cannot be negative")
    if args.connections < args.threads:
        parser.error("wrk needs --connections >= --threads")
    if args.meshproxy_config and not Path(args.meshproxy_config).is_file():
        parser.error(f"--meshproxy-config: no such file: {args.meshproxy_config}")
    return args


def find_tools(args):
    """
    Return the paths of the programs needed, or print what to install and
    return None.
    """
    tools = {name: shutil.which(name) for name in ("wrk", "haproxy", "nginx")}
    # Debian puts haproxy and nginx in /usr/sbin, which may not be on a user's PATH.
    missing = [name for name, path in tools.items() if path is None]
    if missing:
        print(f"bench/run.py: not found on PATH: {', '.join(missing)}\n"
              f"install them with:\n\n    {APT_HINT}\n\n"
              "(haproxy and nginx live in /usr/sbin: add it to PATH if they are installed)",
              file=sys.stderr)
        return None
    if args.pin:
        tools["taskset"] = shutil.which("taskset")
        if tools["taskset"] is None:
            print("bench/run.py: taskset not found (package util-linux); "
                  "install it or pass --no-pin", file=sys.stderr)
            return None
    if any(SPECS[t].streams is not None for t in args.only):
        tools["h2load"] = shutil.which("h2load")
        if tools["h2load"] is None:
            print("bench/run.py: h2load not found (package nghttp2-client); the *-h2 "
                  "targets need it", file=sys.stderr)
            return None
    if any(SPECS[t].handshakes for t in args.only):
        tools["openssl"] = shutil.which("openssl")
        if tools["openssl"] is None:
            print("bench/run.py: openssl not found (package openssl); the *-tls-full "
                  "targets need its s_time", file=sys.stderr)
            return None
    return tools


def cpu_list(text):
    """The set of CPUs of a C{taskset -c} list such as C{"0,2-3"}."""
    cpus = set()
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.update(range(int(first), int(last or first) + 1))
    return cpus


def decide_pinning(args):
    """Resolve --pin/--no-pin/auto; return False if an explicit --pin is impossible."""
    try:
        usable = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        usable = set(range(os.cpu_count() or 1))
    wanted = set().union(*(cpu_list(c) for c in args.cpus.values()))
    possible = wanted <= usable
    if args.pin is None:
        args.pin = possible
        if not possible:
            say(f"note: CPUs {sorted(wanted)} not all available; running unpinned")
    elif args.pin and not possible:
        print(f"bench/run.py: --pin needs CPUs {sorted(wanted)}; this process may use "
              f"{sorted(usable)}. Pass --no-pin.", file=sys.stderr)
        return False
    return True


def _raise_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def connection_churn(port, count, batch=100):
    """
    Open C{count} connections to the proxy, C{batch} at a time, each sending
    one GET and closing after the answer; return how many failed.
    """
    import socket

    request = b"GET / HTTP/1.1\r\nHost: hello\r\nConnection: close\r\n\r\n"
    failed = 0
    done = 0
    while done < count:
        n = min(batch, count - done)
        socks = []
        for _ in range(n):
            s = socket.create_connection((LOOPBACK, port), timeout=10)
            s.sendall(request)
            socks.append(s)
        for s in socks:
            data = b""
            try:
                while True:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            except OSError:
                pass
            if not data.startswith(b"HTTP/1.1 200"):
                failed += 1
            s.close()
        done += n
    return failed


HOLD_REQUEST = b"GET / HTTP/1.1\r\nHost: hello\r\n\r\n"


def raise_nofile(wanted):
    """
    Raise this process's soft limit of open files towards C{wanted} (the
    servers it starts inherit it), up to the hard limit.

    @return: the soft limit now.
    """
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


async def _hold_one(index, port, count, interval, duration, stages, latencies, errors):
    """
    One held connection: opened from one of 8 loopback source addresses
    (so that 10,000 connections do not run out of ports); once
    C{stages["request"]} is set, one request answered; then idle until the
    steady phase (C{stages["steady"]} is set, to its start time), in which
    it sends one request every C{interval} seconds, at its own offset.
    C{stages["connected"]} and C{stages["answered"]} count those done (or
    failed: with an error counted); C{stages["first"]} bounds the first
    requests in flight.
    """
    import asyncio

    source = f"127.0.0.{2 + index % 8}"
    try:
        reader, writer = await asyncio.open_connection(LOOPBACK, port, local_addr=(source, 0))
    except OSError as e:
        errors[f"connect: {type(e).__name__}"] = errors.get(f"connect: {type(e).__name__}", 0) + 1
        stages["connected"].append(False)
        stages["answered"].append(False)
        return
    stages["connected"].append(True)

    async def exchange():
        writer.write(HOLD_REQUEST)
        head = await reader.readuntil(b"\r\n\r\n")
        length = re.search(rb"(?i)content-length: *(\d+)", head)
        await reader.readexactly(int(length.group(1)) if length else 0)
        if head.startswith(b"HTTP/1.1 200"):
            return True
        status = head.split(b"\r\n", 1)[0].decode("latin-1")
        reason = re.search(rb"(?i)\r\nmesh-err: *([^\r]*)", head)
        if reason:
            status += " " + reason.group(1).decode("latin-1")
        errors[status] = errors.get(status, 0) + 1
        return False

    loop = asyncio.get_running_loop()
    try:
        ok = False
        try:
            await stages["request"]
            # A few at a time: a burst of 10,000 would meet the router's
            # concurrency limit (503) and leave a pool of upstream
            # connections and a high-water mark behind.
            async with stages["first"]:
                ok = await exchange()
        finally:
            stages["answered"].append(ok)
        phase = await stages["steady"]
        start = phase + interval * index / count
        while start < phase + duration:
            await asyncio.sleep(max(0.0, start - loop.time()))
            sent = loop.time()
            if await exchange():
                latencies.append(loop.time() - sent)
            start += interval
    except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
        errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
    finally:
        writer.close()


def hold_connections(port, pid, count, interval, duration):
    """
    Open C{count} keep-alive connections to the proxy on C{port}, one
    request on each, and read the RSS of the proxy's process tree (C{pid}
    and its workers) before and after; then, through the same connections,
    one request per connection every C{interval} seconds for C{duration}
    seconds, and the latency of each.

    @return: a dict: C{connections}, C{opened} (answered 200),
        C{rss_before_kib}, C{rss_connected_kib} (all open, no request yet),
        C{rss_held_kib} (one request answered on each),
        C{kib_per_connection} (from before to held), the
        steady phase's C{requests}, C{rps}, C{proxy_cpu_util} (the proxy's
        CPU time over the phase), C{p50_ms} ... C{p999_ms}, C{max_ms} and
        C{errors}.
    """
    import asyncio

    def rss():
        return sum(smaps_kib(p)["rss_kib"] for p in process_tree(pid))

    async def main():
        loop = asyncio.get_running_loop()
        stages = {"request": loop.create_future(), "steady": loop.create_future(),
                  "first": asyncio.Semaphore(50), "connected": [], "answered": []}
        latencies, errors = [], {}
        before = rss()
        tasks = []
        for i in range(count):
            tasks.append(asyncio.ensure_future(_hold_one(
                i, port, count, interval, duration, stages, latencies, errors)))
            if i % 200 == 199:
                await asyncio.sleep(0)  # (let them connect in batches)
        while len(stages["connected"]) < count:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # (the proxy accepted them all: a benchmark)
        connected = rss()
        stages["request"].set_result(None)
        while len(stages["answered"]) < count:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        held = rss()
        cpu = tree_cpu_seconds(pid)
        stages["steady"].set_result(loop.time())
        await asyncio.gather(*tasks)
        cpu = tree_cpu_seconds(pid) - cpu
        return (before, connected, held, latencies, errors, sum(stages["connected"]),
                sum(stages["answered"]), cpu)

    (before, connected, held, latencies, errors, connections, opened,
     cpu) = asyncio.run(main())
    latencies.sort()

    def pct(q):
        if not latencies:
            return None
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1e3

    return {
        "connections": count, "connected": connections, "opened": opened,
        "rss_before_kib": before, "rss_connected_kib": connected, "rss_held_kib": held,
        "kib_per_connection": (held - before) / max(1, opened),
        "interval_s": interval, "duration_s": duration,
        "requests": len(latencies), "rps": len(latencies) / duration,
        "proxy_cpu_util": cpu / duration,
        "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
        "p999_ms": pct(0.999), "max_ms": latencies[-1] * 1e3 if latencies else None,
        "errors": errors,
    }


def main(argv=None):
    args = parse_args(argv)
    if not decide_pinning(args):
        return 2
    tools = find_tools(args)
    if tools is None:
        return 2

    # SIGTERM and SIGHUP take the same way out as Ctrl-C, through the finally below.
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    tmp = Path(tempfile.mkdtemp(prefix="meshproxy-bench-"))
    bench = Bench(args, tools, tmp)
    rc = 0
    try:
        bench.run()
        print_report(bench.results, args)
    except HarnessError as e:
        print(f"\nbench/run.py: {e}", file=sys.stderr)
        for proc in e.procs:
            print(proc.log_tails(), file=sys.stderr)
        if not args.keep:
            print("(pass --keep to keep the configs and logs)", file=sys.stderr)
        bench.results["error"] = str(e)
        rc = 1
    except KeyboardInterrupt:
        print("\nbench/run.py: interrupted, stopping servers", file=sys.stderr)
        bench.results["error"] = "interrupted"
        rc = 130
    finally:
        # A second Ctrl-C must not leave servers behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        bench.stop()
        if args.keep:
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if args.json:
        path = Path(args.json)
        if path.parent != Path(""):
            path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(bench.results, indent=2, default=str) + "\n")
        print(f"wrote {path}", file=sys.stderr)
    return rc


if __name__ == "__main__":
    sys.exit(main())
