"""
HTTP/2 from clients: each stream of a connection is one exchange of the HTTP
router (L{meshproxy.http.exchange.Exchange}), run by the same filter stack as
an HTTP/1 request; and HTTP/2 to upstreams, each try one stream of a pooled
connection.

  - L{connection}: L{H2ServerConnection<connection.H2ServerConnection>}, one
    client connection driving the C{h2} library's state machine: settings,
    streams opened, refused and reset, flow control both ways, drain
    (GOAWAY), timeouts, and errors and floods turned into stream resets or
    a GOAWAY;
  - L{stream}: L{H2Stream<stream.H2Stream>}, one stream as its exchange sees
    its client connection (L{IClientConnection}), and the response writer
    that sends HEADERS, DATA and trailers frames within the client's
    flow-control windows;
  - L{headers}: a stream's request made from its header list (pseudo-header
    fields, the HTTP/1 checks), and the response fields an HTTP/2 client
    may be sent;
  - L{client}: L{H2Pool<client.H2Pool>}, the connections to one upstream
    endpoint, each (L{H2UpstreamConnection<client.H2UpstreamConnection>})
    multiplexing streams, each (L{H2UpstreamStream<client.H2UpstreamStream>})
    an exchange's upstream connection and request writer;
  - L{frames}: the frames a client sends, counted before the C{h2} library
    sees them (floods, header blocks), and the limits on them.
"""
