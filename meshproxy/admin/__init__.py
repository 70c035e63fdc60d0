"""meshproxy.admin"""
