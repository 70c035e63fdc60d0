"""meshproxy.http"""
