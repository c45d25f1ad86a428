"""Byte-level device emulators that speak the field protocols, for tests and demos without hardware."""
