"""The few non-public APIs the hot paths rely on, checked so that an upgrade that moves them fails here.

- ``MeshChannel`` subclasses ``grpc.aio._channel.Channel`` and hands it the core credentials
  (``ChannelCredentials._credentials``): a unary call then skips grpc.aio's interceptor machinery (about a
  third of the per-call policy cost). grpcio is pinned to the tested range in pyproject.toml.
- ``UnsampledChildren`` reads the SDK tracer's ``sampler``/``id_generator`` attributes and the public
  ``ParentBased.get_description()`` text, whose format is not a documented contract.
"""

from __future__ import annotations

import inspect
from importlib.metadata import version

import grpc
from grpc.aio import _channel as aio_channel
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased, TraceIdRatioBased
from packaging.requirements import Requirement
from packaging.version import Version

from agentmesh._settings import Settings
from agentmesh.resilience import MeshChannel, client_policy
from agentmesh.telemetry._tracing import UnsampledChildren


def test_grpc_is_within_the_pinned_range() -> None:
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[2] / "pyproject.toml").read_text())
    pins = {Requirement(r).name: Requirement(r) for r in pyproject["project"]["dependencies"]}
    for package in ("grpcio", "grpcio-tools"):
        assert Version(version(package)) in pins[package].specifier, (package, version(package))


def test_grpc_aio_channel_constructor_and_unary_factory_are_as_meshchannel_calls_them() -> None:
    init = list(inspect.signature(aio_channel.Channel.__init__).parameters)
    assert init == ["self", "target", "options", "credentials", "compression", "interceptors"]
    unary = inspect.signature(aio_channel.Channel.unary_unary).parameters
    assert list(unary)[:4] == ["self", "method", "request_serializer", "response_deserializer"]
    assert "_registered_method" in unary
    credentials = grpc.ssl_channel_credentials()
    assert type(credentials._credentials).__name__ == "SSLChannelCredentials"


async def test_a_meshchannel_can_still_be_built_and_closed() -> None:
    settings = Settings()
    channel = MeshChannel("127.0.0.1:1", [], grpc.ssl_channel_credentials(), client_policy("x", settings, "t"))
    assert channel.unary_unary("/x.Y/Z") is not None
    await channel.close()


def test_parent_based_descriptions_still_name_the_unsampled_delegates() -> None:
    mesh = TracerProvider(sampler=ParentBased(TraceIdRatioBased(0.01))).get_tracer("t")
    assert UnsampledChildren.for_tracer(mesh) is not None
    keeps_children = ParentBased(ALWAYS_ON, local_parent_not_sampled=ALWAYS_ON)
    assert UnsampledChildren.for_tracer(TracerProvider(sampler=keeps_children).get_tracer("t")) is None
    assert hasattr(mesh, "sampler") and hasattr(mesh, "id_generator")
