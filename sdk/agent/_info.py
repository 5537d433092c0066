"""``AgentInfo``: the hand-written part of an agent's card (who it is, not where it runs)."""

from __future__ import annotations

import re

from packaging.version import InvalidVersion, Version
from pydantic import BaseModel, ConfigDict, Field, field_validator

_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,61}[a-z0-9])?$")
_POLICY = re.compile(r"^[a-z0-9_.-]+:[A-Za-z0-9_.*-]+$")


class AgentInfo(BaseModel):
    """Identity and characteristics of an agent, checked when the class is defined.

    The runtime adds the endpoint, the SPIFFE ID and the skills to make the full ``AgentCard``.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(description="DNS-label-like name, unique within the namespace, e.g. 'triage'.")
    namespace: str = Field(default="default", description="DNS-label-like namespace, e.g. 'support'.")
    version: str = Field(default="0.1.0", description="PEP 440 version, e.g. '1.2.0'.")
    purpose: str = Field(default="", description="Short purpose category used by discovery filters.")
    description: str = Field(default="", description="What the agent is for; used for intent ranking.")
    policies: tuple[str, ...] = Field(default=(), description="'key:value' policies, e.g. 'pii:restricted'.")
    labels: dict[str, str] = Field(default_factory=dict, description="Free key/value labels.")
    owner: str = Field(default="", description="Owning team or person.")

    @field_validator("name", "namespace")
    @classmethod
    def _dns_label(cls, value: str) -> str:
        if not _DNS_LABEL.match(value):
            raise ValueError(f"{value!r} is not a lower-case DNS-label-like name (a-z, 0-9, '-', '_')")
        return value

    @field_validator("version")
    @classmethod
    def _pep440(cls, value: str) -> str:
        try:
            Version(value)
        except InvalidVersion:
            raise ValueError(f"{value!r} is not a PEP 440 version") from None
        return value

    @field_validator("policies")
    @classmethod
    def _policies(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for policy in value:
            if not _POLICY.match(policy):
                raise ValueError(f"policy {policy!r} is not 'key:value'")
        return value
