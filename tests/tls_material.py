"""Certificates and password files for TLS tests, made with the openssl and mosquitto_passwd tools."""

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

from deploy.servers import MosquittoServer, find_free_port, require_binaries


@dataclass(frozen=True)
class TlsMaterial:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_ca: Path
    """A CA that signed nothing the broker uses."""
    password_file: Path


async def _run(*args: str) -> None:
    process = await asyncio.create_subprocess_exec(
        *args, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    assert process.returncode == 0, f"{args[0]} failed: {out.decode(errors='replace')}"


async def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    await _run(
        "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return cert, key


async def _signed(
    directory: Path, name: str, ca: tuple[Path, Path], san: str | None
) -> tuple[Path, Path]:
    cert, key, csr = directory / f"{name}.pem", directory / f"{name}.key", directory / f"{name}.csr"
    await _run(
        "openssl", "req", "-new", "-newkey", "rsa:2048", "-nodes",
        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(csr),
    )  # fmt: skip
    args = [
        "openssl", "x509", "-req", "-in", str(csr), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "2", "-out", str(cert),
    ]  # fmt: skip
    if san:
        ext = directory / f"{name}.ext"
        ext.write_text(f"subjectAltName={san}\n")
        args += ["-extfile", str(ext)]
    await _run(*args)
    return cert, key


async def make_tls_material(directory: Path, user: str, password: str) -> TlsMaterial:
    ca = await _ca(directory, "ecotel-test-ca")
    other = await _ca(directory, "some-other-ca")
    server = await _signed(directory, "broker", ca, "IP:127.0.0.1,DNS:localhost")
    client = await _signed(directory, "gateway", ca, None)
    passwd = directory / "passwd"
    await _run("mosquitto_passwd", "-b", "-c", str(passwd), user, password)
    return TlsMaterial(ca[0], server[0], server[1], client[0], client[1], other[0], passwd)


def tls_listener(port: int, material: TlsMaterial) -> str:
    """Mosquitto config lines for a TLS listener that wants a client certificate and a password."""
    return "\n".join(
        [
            f"listener {port} 127.0.0.1",
            f"cafile {material.ca}",
            f"certfile {material.server_cert}",
            f"keyfile {material.server_key}",
            "require_certificate true",
            "allow_anonymous false",
            f"password_file {material.password_file}",
        ]
    )


@dataclass(frozen=True)
class TlsBroker:
    """A real Mosquitto with a plain loopback listener and a TLS listener that wants both."""

    server: MosquittoServer
    tls_port: int
    material: TlsMaterial


@contextlib.asynccontextmanager
async def tls_broker_in(directory: Path, user: str, password: str) -> AsyncIterator[TlsBroker]:
    """Make the certificates and password file in ``directory`` and run the broker."""
    require_binaries()
    material = await make_tls_material(directory, user, password)
    tls_port = find_free_port()
    server = MosquittoServer(directory / "broker", extra_config=tls_listener(tls_port, material))
    async with server:
        yield TlsBroker(server, tls_port, material)
