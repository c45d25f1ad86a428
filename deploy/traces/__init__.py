"""Trace tooling: record MQTT traffic to a file, replay it, import packet captures, inspect and trim."""
