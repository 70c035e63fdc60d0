"""meshproxy.balancing"""
