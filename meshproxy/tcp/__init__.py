"""meshproxy.tcp"""
