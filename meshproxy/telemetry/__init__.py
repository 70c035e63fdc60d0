"""meshproxy.telemetry"""
