"""What each device kind measures, with units and plausible ranges, and simulators that produce it.

Nothing here imports the rest of ecotel: the catalog is the root of the data flow.
"""

from devices.catalog import KINDS, CatalogError, check_values, kind_of, kinds_in
from devices.identifiers import Identifier
from devices.kind import ChannelSpec, Domain, KindValues
from devices.quantity import QuantitySpec, Role
from devices.reading import Reading

__all__ = [
    "KINDS",
    "CatalogError",
    "ChannelSpec",
    "Domain",
    "Identifier",
    "KindValues",
    "QuantitySpec",
    "Reading",
    "Role",
    "check_values",
    "kind_of",
    "kinds_in",
]
