"""
What both routers' connections share, below HTTP and TCP: the fast write
path (L{fastwrite}), the gate pausing a transport for several reasons at
once (L{gate}), the connector making upstream connections through
Twisted client endpoints (L{connector}), and the transports they run on
(L{interfaces}).
"""
