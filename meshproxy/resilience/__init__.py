"""meshproxy.resilience"""
