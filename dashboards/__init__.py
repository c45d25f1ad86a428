"""Grafana dashboards generated from the device catalog: InfluxQL panels, variables, provisioning files.

Depends only on devices/; nothing depends on it.
"""
