"""SeaweedFS' security.toml for the embedded stack: every port but S3 needs a credential.

Per stack, generated once into the state folder (files 0600, never logged):
  tls/ca.pem, tls/node.pem, tls/node.key  a private CA and one certificate (server and client use) signed by it
  security.toml                           mutual TLS on every gRPC port and on the master, volume and filer HTTP
                                          ports (a client without the CA's certificate cannot even connect);
                                          JWT signing of volume and filer reads and writes behind that.
The S3 gateway, inside the same `weed server` process, holds the certificate and the keys; S3 clients
authenticate with SigV4 as before.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import secrets
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

VALID_DAYS = 3650
GRPC_SERVICES = ("master", "volume", "filer", "s3", "client")
HTTPS_SERVICES = ("master", "volume", "filer")


def write_private(path: Path, data: str | bytes) -> None:
    """Write `data` to `path`, readable by the owner only (0600), whatever the umask."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data.encode() if isinstance(data, str) else data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _certificates(tls_dir: Path) -> None:
    """A CA and one node certificate for 127.0.0.1/localhost, good for TLS servers and clients."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, node_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlpipe embedded stack CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now)
          .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    node = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tlpipe-stack")]))
            .issuer_name(ca_name).public_key(node_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                           critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    tls_dir.mkdir(mode=0o700, exist_ok=True)
    write_private(tls_dir / "ca.pem", ca.public_bytes(serialization.Encoding.PEM))
    write_private(tls_dir / "node.pem", node.public_bytes(serialization.Encoding.PEM))
    write_private(tls_dir / "node.key", _key_pem(node_key))


def _toml(tls_dir: Path) -> str:
    ca, cert, key = (str(tls_dir / name) for name in ("ca.pem", "node.pem", "node.key"))
    sections = [f'[grpc]\nca = "{ca}"\n']
    sections += [f'[grpc.{svc}]\ncert = "{cert}"\nkey = "{key}"\n' for svc in GRPC_SERVICES]
    sections += [f'[https.{svc}]\ncert = "{cert}"\nkey = "{key}"\nca = "{ca}"\n' for svc in HTTPS_SERVICES]
    sections.append(f'[https.client]\nenabled = true\ncert = "{cert}"\nkey = "{key}"\nca = "{ca}"\n')
    for section in ("jwt.signing", "jwt.signing.read", "jwt.filer_signing", "jwt.filer_signing.read"):
        sections.append(f'[{section}]\nkey = "{secrets.token_urlsafe(32)}"\nexpires_after_seconds = 10\n')
    sections.append("[access]\nui = false\n")
    sections.append("[filer.expose_directory_metadata]\nenabled = false\n")
    return "\n".join(sections)


def ensure(state_dir: Path) -> Path:
    """The stack's security.toml (written with its certificates the first time); returns its path."""
    path = state_dir / "security.toml"
    if not path.exists():
        _certificates(state_dir / "tls")
        write_private(path, _toml(state_dir / "tls"))
    return path
