"""Names of sites, gateways, devices and channels: what any of them may contain.

They travel in MQTT topic levels and InfluxDB tags, so a name may hold any
Unicode text (Chinese, spaces, commas, quotes) except what would break those.
"""

from typing import Annotated

from pydantic import StringConstraints

# Forbidden: MQTT topic separators and wildcards (/ + #), control characters
# (a newline would end a line-protocol line), and the backslash, whose
# meaning before a separator differs between InfluxDB versions. A leading '$'
# is reserved by brokers ($SYS, $share); edges may not be blank so that what an
# operator types in a dashboard matches what is stored.
IDENTIFIER_PATTERN = r"^[^\x00-\x20\x7f/+#\\$][^\x00-\x1f\x7f/+#\\]{0,62}[^\x00-\x20\x7f/+#\\]$|^[^\x00-\x20\x7f/+#\\$]$"

Identifier = Annotated[str, StringConstraints(pattern=IDENTIFIER_PATTERN, max_length=64)]
"""A site, gateway, device or channel name: 1-64 characters, see the module doc."""
