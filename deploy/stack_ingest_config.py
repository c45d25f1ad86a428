"""The local stack's ingest as a TOML file in its data dir, so that `ecotel-ingest --config` reaches
the same dead letters, InfluxDB and meter map while the stack runs."""

import os
from importlib import resources
from pathlib import Path

from deploy.servers import toml_str

DATABASE = "ecotel"


def sample_derive_toml() -> str:
    """The shipped sample ingest config's [derive] tables (its last section), as written there."""
    text = (resources.files("deploy") / "ingest" / "ingest.toml").read_text(encoding="utf-8")
    start = text.find("\n[derive]\n")
    if start < 0:
        raise ValueError("deploy/ingest/ingest.toml has no [derive] section")
    return text[start + 1 :]


def write_stack_ingest_config(
    data: Path, *, mqtt_port: int, influx_url: str, api_port: int, token: str
) -> Path:
    """``<data>/ingest/ingest.toml``, rewritten at every start (the ports change); 0600, as it
    holds the operator's API token."""
    path = data / "ingest" / "ingest.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = f"""\
# Written by ecotel-stack at every start: the stack's own ingest, for the dead-letter
# commands while the stack runs (ecotel-ingest --config THIS-FILE dead-letters list).
# Not for `run` beside the stack: the same client id and API port would collide.
# Ports change at every start; edits are overwritten.
stats_interval_s = 10                     # the fleet dashboard's ingest panels draw from these

[mqtt]
host = "127.0.0.1"
port = {mqtt_port}
client_id = "ecotel-ingest-stack"

[influx]
url = {toml_str(influx_url)}
database = {toml_str(DATABASE)}

[batch]
max_delay_s = 0.5

[dead_letter]
path = {toml_str(data / "ingest" / "dead-letters.sqlite3")}

[api]
enabled = true
port = {api_port}
tokens = [{{ token = {toml_str(token)}, name = "local stack operator" }}]

{sample_derive_toml()}"""
    temporary = path.with_name(f"{path.name}.tmp")
    temporary.unlink(missing_ok=True)
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as out:
        out.write(text)
    temporary.replace(path)
    return path
