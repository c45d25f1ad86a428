"""Data-center PUE metering: energy counters per circuit and rack inlet conditions."""

from typing import ClassVar

from devices.kind import ChannelSpec, Domain, KindValues
from devices.quantity import Role, quantity

CIRCUITS = ("utility", "renewable", "ups_output", "pdu_output", "it_load", "cooling", "lighting")
"""Where an energy meter may sit. PUE = utility / IT energy; the IT meter's place
(UPS output, PDU output or IT input) is the PUE category of ISO/IEC 30134-2."""


class EnergyMeter(KindValues):
    """One metered circuit: a cumulative energy counter and the active power; the circuit is the channel."""

    kind: ClassVar[str] = "energy_meter"
    domain: ClassVar[Domain] = Domain.DATACENTER
    title: ClassVar[str] = "Energy meter"
    channel: ClassVar[ChannelSpec | None] = ChannelSpec(
        tag="circuit", title="Circuit", allowed=CIRCUITS
    )

    # A counter only rises; a drop is a rollover or a replaced meter, which
    # the analytics handle, so the hard limit here is only "not negative".
    energy_kwh: float = quantity(
        "Energy (cumulative)", "kWh", 0, None, grafana_unit="kwatth", decimals=1, role=Role.COUNTER
    )
    active_power_kw: float = quantity("Active power", "kW", 0, 200_000, grafana_unit="kwatt")


class RackEnvironment(KindValues):
    """Conditions at one rack's inlet; the rack is the channel."""

    kind: ClassVar[str] = "rack_environment"
    domain: ClassVar[Domain] = Domain.DATACENTER
    title: ClassVar[str] = "Rack environment"
    channel: ClassVar[ChannelSpec | None] = ChannelSpec(tag="rack", title="Rack")

    inlet_temperature: float = quantity(
        "Inlet temperature", "degC", 0, 60, grafana_unit="celsius", normal=(18, 27)
    )
    relative_humidity: float = quantity(
        "Relative humidity", "%", 0, 100, grafana_unit="humidity", decimals=0
    )
