"""
twistd plugin for meshproxy: C{twistd meshproxy --config FILE}.

Kept tiny on purpose: importing this module must not import the reactor or
anything heavy, since twistd imports every plugin to list them.
"""
from twisted.application.service import ServiceMaker

meshproxy = ServiceMaker(
    "meshproxy",
    "meshproxy.tap",
    "A service-mesh proxy: dtab routing, discovery, balancing, retries.",
    "meshproxy",
)
