"""meshproxy.routing"""
