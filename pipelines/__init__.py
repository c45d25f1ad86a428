"""The ingest service: MQTT in, validation against the catalog, batched writes to InfluxDB."""
