"""
meshproxy: a service-mesh proxy on Twisted.
"""

__version__ = "0.1.0"
