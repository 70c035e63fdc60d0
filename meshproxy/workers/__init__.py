"""
Worker processes under one supervisor: the data path on every core.

The twistd process (the supervisor) keeps the config, the admin API, the
namers and the stores, and binds the listening sockets; worker processes,
forked from a zygote that did the imports, adopt those sockets and run the
routers. They talk AMP over a socketpair (see L{meshproxy.workers.protocol}).
"""
