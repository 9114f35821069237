"""A self-signed TLS certificate for the panel, made once with openssl, and daphne's endpoint for it."""

from __future__ import annotations

import grp
import ipaddress
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

CERT_NAME = "cert.pem"
KEY_NAME = "key.pem"
DAYS = 825  # the longest validity browsers accepted for a server certificate when this was written

_DNS_NAME = re.compile(r"^(?=.{1,253}$)(\*\.)?([A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9])?)*\.?$")


class TLSError(Exception):
    """The certificate could not be made."""


def subject_alt_names(hostnames: Iterable[str]) -> list[str]:
    """Return openssl subjectAltName entries (DNS:... / IP:...) for hostnames, refusing bad ones."""
    names: list[str] = []
    for name in hostnames:
        name = name.strip().strip("[]")
        if not name:
            continue
        try:
            entry = f"IP:{ipaddress.ip_address(name)}"
        except ValueError:
            if not _DNS_NAME.match(name):
                raise TLSError(f"{name!r} is neither a host name nor an IP address") from None
            entry = f"DNS:{name.rstrip('.').lower()}"
        if entry not in names:
            names.append(entry)
    if not names:
        raise TLSError("a certificate needs at least one host name or address")
    return names


def ensure_certificate(directory: str | os.PathLike, hostnames: Iterable[str], *, group: str | None = None,
                       days: int = DAYS) -> tuple[Path, Path]:
    """Return (cert, key) in directory, making a self-signed certificate for hostnames if there is none.

    An existing pair is never rewritten (it may be the admin's own). When run as root with group (the web
    user's group), the key is root:group 0640 and the directory root:group 0750: the web server reads the
    key, nobody else can, and the web server cannot replace it.
    """
    directory = Path(directory)
    cert, key = directory / CERT_NAME, directory / KEY_NAME
    if cert.exists() and key.exists():
        return cert, key
    if shutil.which("openssl") is None:
        raise TLSError("openssl is not installed (apt-get install openssl)")
    sans = subject_alt_names(hostnames)
    gid = _gid(group)
    directory.mkdir(parents=True, exist_ok=True, mode=0o750)
    if gid is not None:
        os.chown(directory, 0, gid)
    directory.chmod(0o750)
    common_name = sans[0].split(":", 1)[1]
    config = "\n".join([
        "[req]", "distinguished_name = dn", "prompt = no", "x509_extensions = ext",
        "[dn]", f"CN = {common_name[:64]}", "O = vzpanel (self-signed)",
        "[ext]", "basicConstraints = critical,CA:FALSE", "keyUsage = critical,digitalSignature,keyEncipherment",
        "extendedKeyUsage = serverAuth", "subjectKeyIdentifier = hash", f"subjectAltName = {','.join(sans)}", "",
    ])
    with tempfile.TemporaryDirectory(dir=directory, prefix=".new-") as tmp:
        tmp_key, tmp_cert, tmp_conf = Path(tmp, KEY_NAME), Path(tmp, CERT_NAME), Path(tmp, "req.cnf")
        tmp_conf.write_text(config)
        # The key file exists with its final mode before openssl writes a byte into it.
        os.close(os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        result = subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-sha256",
             "-nodes", "-days", str(days), "-config", str(tmp_conf), "-keyout", str(tmp_key),
             "-out", str(tmp_cert)],
            capture_output=True, text=True, check=False,
        )
        if result.returncode != 0:
            raise TLSError(f"openssl req failed: {result.stderr.strip().splitlines()[-1:] or result.returncode}")
        if gid is not None:
            os.chown(tmp_key, 0, gid)
            os.chown(tmp_cert, 0, gid)
        tmp_key.chmod(0o640 if gid is not None else 0o600)
        tmp_cert.chmod(0o644)
        # Key first: a reader that finds the certificate always finds its key.
        os.replace(tmp_key, key)
        os.replace(tmp_cert, cert)
    return cert, key


def _gid(group: str | None) -> int | None:
    if group is None or os.geteuid() != 0:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise TLSError(f"group {group!r} does not exist") from None


def _escape(value: str) -> str:
    # Twisted endpoint strings split on ':' and '=' and unescape backslashes.
    return value.replace("\\", "\\\\").replace(":", "\\:").replace("=", "\\=")


def tcp_endpoint(host: str, port: int) -> str:
    """Return the Twisted endpoint string for daphne's `-e` that serves plain HTTP on host:port."""
    return f"tcp:port={int(port)}:interface={_escape(host.strip('[]'))}"


def daphne_endpoint(host: str, port: int, cert: str | os.PathLike, key: str | os.PathLike) -> str:
    """Return the Twisted endpoint string for daphne's `-e` that serves TLS on host:port."""
    return (f"ssl:port={int(port)}:interface={_escape(host.strip('[]'))}"
            f":privateKey={_escape(str(key))}:certKey={_escape(str(cert))}")
