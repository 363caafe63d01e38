"""TLS material made in the test run with ``trustme``: a CA, a server certificate for the
loopback address, client certificates from that CA and from a stranger CA, as PEM files."""
from __future__ import annotations

import ssl
from dataclasses import dataclass
from pathlib import Path

import pytest


@dataclass
class Certs:
    ca: Path            # CA that signed the server and the good client certificate
    server_cert: Path   # chain of the server certificate (127.0.0.1, localhost)
    server_key: Path
    client: Path        # client certificate + key (one PEM) signed by ``ca``
    stranger: Path      # client certificate + key signed by another CA

    def client_context(self, cert: Path = None) -> ssl.SSLContext:
        """A client context that trusts ``ca`` and presents ``cert`` if given."""
        context = ssl.create_default_context(cafile=str(self.ca))
        if cert is not None:
            context.load_cert_chain(str(cert))
        return context


def make_certs(directory: Path) -> Certs:
    trustme = pytest.importorskip("trustme", reason="trustme is not installed "
                                  "(pip install trustme; make test installs it)")
    directory.mkdir(parents=True, exist_ok=True)
    ca = trustme.CA()
    stranger_ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    client = ca.issue_cert("scraper@example.test")
    stranger = stranger_ca.issue_cert("intruder@example.test")
    certs = Certs(ca=directory / "ca.pem", server_cert=directory / "server.pem",
                  server_key=directory / "server.key", client=directory / "client.pem",
                  stranger=directory / "stranger.pem")
    ca.cert_pem.write_to_path(str(certs.ca))
    server.private_key_pem.write_to_path(str(certs.server_key))
    with open(certs.server_cert, "wb") as fh:
        for blob in server.cert_chain_pems:
            fh.write(blob.bytes())
    client.private_key_and_cert_chain_pem.write_to_path(str(certs.client))
    stranger.private_key_and_cert_chain_pem.write_to_path(str(certs.stranger))
    return certs
