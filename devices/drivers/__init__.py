"""Field-protocol drivers: how a gateway talks to real devices (Modbus, SDI-12, DL/T 645)."""
