"""The field gateway runtime: polls devices and publishes their readings over MQTT."""
