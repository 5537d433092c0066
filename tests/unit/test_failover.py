"""Replica address lists become one gRPC target; the server is checked by its identity's host name."""

from __future__ import annotations

from datetime import timedelta

import pytest
from cryptography import x509

from agentmesh._errors import InvalidArgumentError
from agentmesh._failover import replica_options, replica_target, split_addresses
from agentmesh._settings import Settings
from agentmesh.security import CertificateAuthority, SpiffeId


def test_one_address_is_left_to_grpcs_dns_resolver() -> None:
    assert replica_target("registry.example:7400") == "registry.example:7400"
    assert replica_target(" 127.0.0.1:7400 ") == "127.0.0.1:7400"


def test_several_addresses_become_one_static_list_in_order() -> None:
    assert replica_target("127.0.0.1:7400, 127.0.0.2:7401") == "ipv4:127.0.0.1:7400,127.0.0.2:7401"
    assert replica_target("[::1]:7400,[::2]:7400") == "ipv6:[::1]:7400,[::2]:7400"
    assert replica_target("localhost:7400,127.0.0.2:7401").startswith("ipv4:127.0.0.1:7400,")


@pytest.mark.parametrize("bad", ["", " , ", "no-port,127.0.0.1:1", "127.0.0.1:x,127.0.0.1:1"])
def test_a_malformed_list_is_a_clear_error(bad: str) -> None:
    with pytest.raises(InvalidArgumentError):
        replica_target(bad)


def test_split_drops_blanks() -> None:
    assert split_addresses("a:1,,b:2,") == ("a:1", "b:2")


def test_the_channel_verifies_the_identity_host_name_not_the_address() -> None:
    options = dict(replica_options(Settings(trust_domain="mesh.test"), "service/registry"))
    assert options["grpc.ssl_target_name_override"] == "registry.service.mesh.test"
    assert "grpc.ssl_target_name_override" not in dict(
        replica_options(Settings(trust_domain="mesh.test", insecure_dev=True), "service/registry")
    )


def test_certificates_carry_their_identity_host_name_and_no_one_elses(tmp_path: object) -> None:
    ca = CertificateAuthority.init(tmp_path, "mesh.test")  # type: ignore[arg-type]
    issued = ca.issue("service", "registry", dns=("registry-0.internal",), ttl=timedelta(hours=1))
    cert = x509.load_pem_x509_certificate(issued.cert_path.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert names.get_values_for_type(x509.DNSName) == ["registry.service.mesh.test", "registry-0.internal"]
    with pytest.raises(InvalidArgumentError, match="identity names"):
        ca.issue("service", "planner", dns=("registry.service.mesh.test",))
    assert SpiffeId("mesh.test", "service", "planner").hostname == "planner.service.mesh.test"
