"""Deployment helpers: local Mosquitto and InfluxDB processes and the machine bootstrap."""
