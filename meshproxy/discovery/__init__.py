"""meshproxy.discovery"""
