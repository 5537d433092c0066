"""Validation of agent cards and discovery queries; every failure names the offending field.

Versions are PEP 440 in normal form (``packaging.version``): ``1.2.0``, ``2.0.0rc1``. A non-normal spelling
(``1.0.0-rc1``) is refused with the normal form in the message, so one version never has two spellings.
"""

from __future__ import annotations

import functools
import ipaddress
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema
import referencing
import referencing.exceptions
from google.protobuf import json_format
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import InvalidVersion, Version
from referencing.jsonschema import DRAFT202012

from agentmesh._errors import InvalidArgumentError
from agentmesh.services.registry.model import echo
from agentmesh.services.registry.visibility import (
    PatternError,
    VisibilityPattern,
    compile_pattern,
    refuse_pattern,
)
from agentmesh.storage import has_nul
from agentmesh.v1 import agent_pb2

__all__ = [
    "MAX_CONSTRAINT_LENGTH",
    "MAX_NAMES",
    "MAX_PATTERNS",
    "MAX_PATTERN_LENGTH",
    "compile_patterns",
    "parse_specifier",
    "parse_version",
    "validate_agent_name",
    "validate_card",
    "validate_labels",
    "validate_policies",
    "validate_visibility_names",
]

# DNS label: lower-case letters, digits and inner hyphens, at most 63 characters.
_DNS_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
_PURPOSE = re.compile(r"[a-z0-9](?:[a-z0-9._-]{0,126}[a-z0-9])?")
_SKILL_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}")
_POLICY = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}:[A-Za-z0-9._*-]{1,64}")
_LABEL_KEY = re.compile(r"[a-z0-9](?:[a-z0-9._/-]{0,61}[a-z0-9])?")
_LABEL_VALUE = re.compile(r"[A-Za-z0-9._:/@+=-]{0,256}")
_TAG = re.compile(r"[A-Za-z0-9._ -]{1,64}")
_HOST = re.compile(
    r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)
_SPIFFE = re.compile(r"spiffe://[a-z0-9.-]{1,255}(?:/[A-Za-z0-9._-]{1,128}){1,8}")

MAX_DESCRIPTION = 4096
MAX_SKILL_DESCRIPTION = 2048
MAX_SKILLS = 64
MAX_POLICIES = 64
MAX_LABELS = 64
MAX_TAGS = 32
MAX_OWNER = 256
MAX_VERSION_LENGTH = 64  # the width of the version columns (a longer one failed the INSERT: INTERNAL)
MAX_SCHEMA_BYTES = 64 * 1024
# Visibility scopes and version constraints: bounded so a caller cannot make discovery slow or answers big.
MAX_PATTERNS = 16  # each new one costs an RE2 compile on the event loop (up to ~0.4 ms)
MAX_PATTERN_LENGTH = 256
MAX_NAMES = 1024
MAX_NAME_LENGTH = 127  # namespace/name: two DNS labels
MAX_CONSTRAINT_LENGTH = 256


def _require(condition: bool, message: str, field: str) -> None:
    if not condition:
        raise InvalidArgumentError(message, field=field)


def _match(pattern: re.Pattern[str], value: str, what: str, field: str) -> None:
    _require(
        bool(pattern.fullmatch(value)), f"{what} {value!r} is invalid: must match {pattern.pattern}", field
    )


def parse_version(value: str, field: str = "card.version") -> Version:
    """``value`` as a PEP 440 version in normal form, or INVALID_ARGUMENT naming ``field``."""
    _require(bool(value), "version is required (PEP 440, e.g. 1.2.0)", field)
    _require(
        len(value) <= MAX_VERSION_LENGTH,
        f"version of {len(value)} characters is longer than {MAX_VERSION_LENGTH} (PEP 440, e.g. 1.2.0)",
        field,
    )
    try:
        version = Version(value)
    except InvalidVersion:
        raise InvalidArgumentError(
            f"version {value!r} is not a PEP 440 version (e.g. 1.2.0)", field=field
        ) from None
    _require(str(version) == value, f"version {value!r} is not in PEP 440 normal form; use {version}", field)
    return version


def parse_specifier(value: str, field: str = "characteristics.version_constraint") -> SpecifierSet:
    """``value`` as a PEP 440 version specifier (``>=1.0,<2``), or INVALID_ARGUMENT naming ``field``."""
    _require(
        len(value) <= MAX_CONSTRAINT_LENGTH,
        f"version constraint longer than {MAX_CONSTRAINT_LENGTH} characters ({len(value)})",
        field,
    )
    try:
        return _specifier(value)
    except InvalidSpecifier:
        raise InvalidArgumentError(
            f"version constraint {echo(value)} is not a PEP 440 specifier (e.g. >=1.0,<2)", field=field
        ) from None


@functools.lru_cache(maxsize=1024)
def _specifier(value: str) -> SpecifierSet:
    return SpecifierSet(value)


def validate_policies(policies: Sequence[str], field: str) -> None:
    """Policies are unique ``key:value`` strings, bounded in count and length."""
    _require(len(policies) <= MAX_POLICIES, f"at most {MAX_POLICIES} policies", field)
    for index, policy in enumerate(policies):
        _match(_POLICY, policy, "policy", f"{field}[{index}]")
    _require(len(set(policies)) == len(policies), "policies must be unique", field)


def validate_labels(labels: Mapping[str, str], field: str) -> None:
    """Labels are bounded ``key=value`` strings."""
    _require(len(labels) <= MAX_LABELS, f"at most {MAX_LABELS} labels", field)
    for key, value in labels.items():
        _match(_LABEL_KEY, key, "label key", f"{field}[{key}]")
        _match(_LABEL_VALUE, value, "label value", f"{field}[{key}]")


def _validate_endpoint(endpoint: str, field: str) -> None:
    _require(bool(endpoint), "endpoint is required (host:port)", field)
    host, sep, port = endpoint.rpartition(":")
    _require(
        bool(sep) and port.isdigit() and 0 < int(port) < 65536,
        f"endpoint {endpoint!r} needs host:port",
        field,
    )
    if host.startswith("[") and host.endswith("]"):
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            raise InvalidArgumentError(
                f"endpoint {endpoint!r} has an invalid IPv6 address", field=field
            ) from None
        return
    _require(
        len(host) <= 253 and bool(_HOST.fullmatch(host)), f"endpoint {endpoint!r} has an invalid host", field
    )


def _no_nul(text: str, what: str, field: str) -> None:
    # PostgreSQL text and JSONB cannot hold NUL: refused here, not an INTERNAL error at the INSERT.
    _require("\x00" not in text, f"{what} must not contain NUL characters", field)



def _validate_schema(schema: Any, field: str) -> None:
    _require(  # measured encoded first: unpacking a 3 MB schema costs half a second of the event loop
        schema.ByteSize() <= MAX_SCHEMA_BYTES,
        f"schema larger than {MAX_SCHEMA_BYTES} bytes",
        field,
    )
    document = json_format.MessageToDict(schema)
    _require(not has_nul(document), "schema must not contain NUL characters", field)
    if not document:
        return  # an empty schema accepts anything
    try:
        jsonschema.Draft202012Validator.check_schema(document)
    except jsonschema.SchemaError as exc:
        where = "/".join(str(part) for part in exc.path)
        raise InvalidArgumentError(
            f"not a valid JSON Schema (draft 2020-12): {exc.message}" + (f" at {where}" if where else ""),
            field=field,
        ) from None
    _check_references(document, field)


# Keywords whose values are data, not schemas: a "$ref" key inside them is not a reference.
_DATA_KEYWORDS = frozenset({"const", "enum", "default", "examples"})
_BASE_URI = "urn:agentmesh:skill-schema"


def _check_references(document: dict[str, Any], field: str) -> None:
    """Refuse a ``$ref`` that does not resolve within the schema itself (nothing is ever fetched)."""
    resource = DRAFT202012.create_resource(document)
    resolver = referencing.Registry().with_resource(_BASE_URI, resource).resolver(base_uri=_BASE_URI)

    def walk(node: Any, resolver: Any, path: str) -> None:  # a referencing Resolver (not exported by name)
        if isinstance(node, list):
            for index, item in enumerate(node):
                walk(item, resolver, f"{path}/{index}")
            return
        if not isinstance(node, dict):
            return
        if isinstance(node.get("$id"), str):
            resolver = resolver.in_subresource(DRAFT202012.create_resource(node))
        for keyword in ("$ref", "$dynamicRef"):
            reference = node.get(keyword)
            if isinstance(reference, str):
                try:
                    resolver.lookup(reference)
                except referencing.exceptions.Unresolvable:
                    raise InvalidArgumentError(
                        f"{keyword} {reference[:200]!r} at {path or '/'} does not resolve within the schema "
                        "(references to other documents are not fetched)",
                        field=field,
                    ) from None
        for key, value in node.items():
            if key not in _DATA_KEYWORDS and key != "properties":
                walk(value, resolver, f"{path}/{key}")
            elif key == "properties" and isinstance(value, dict):
                for name, subschema in value.items():  # property names are data, their schemas are not
                    walk(subschema, resolver, f"{path}/properties/{name}")

    walk(document, resolver, "")


def _validate_skill(skill: agent_pb2.Skill, field: str) -> None:
    _match(_SKILL_NAME, skill.name, "skill name (lower_snake_case)", f"{field}.name")
    _require(
        len(skill.description) <= MAX_SKILL_DESCRIPTION, "skill description too long", f"{field}.description"
    )
    _no_nul(skill.description, "skill description", f"{field}.description")
    _require(len(skill.tags) <= MAX_TAGS, f"at most {MAX_TAGS} tags", f"{field}.tags")
    for index, tag in enumerate(skill.tags):
        _match(_TAG, tag, "tag", f"{field}.tags[{index}]")
    _validate_schema(skill.input_schema, f"{field}.input_schema")
    _validate_schema(skill.output_schema, f"{field}.output_schema")


def validate_agent_name(namespace: str, name: str, prefix: str = "") -> None:
    """Namespace and name are DNS labels; the field names get ``prefix`` (e.g. ``"policy."``)."""
    _match(_DNS_LABEL, namespace, "namespace (DNS label)", f"{prefix}namespace")
    _match(_DNS_LABEL, name, "name (DNS label)", f"{prefix}name")


def validate_card(card: agent_pb2.AgentCard, field: str = "card") -> Version:
    """Check every field of ``card``; returns its parsed version. Raises INVALID_ARGUMENT naming the field."""
    validate_agent_name(card.namespace, card.name, f"{field}.")
    version = parse_version(card.version, f"{field}.version")
    _match(_PURPOSE, card.purpose, "purpose", f"{field}.purpose")
    _require(len(card.description) <= MAX_DESCRIPTION, "description too long", f"{field}.description")
    _no_nul(card.description, "description", f"{field}.description")
    validate_policies(card.policies, f"{field}.policies")
    validate_labels(card.labels, f"{field}.labels")
    _validate_endpoint(card.endpoint, f"{field}.endpoint")
    _require(len(card.owner) <= MAX_OWNER, "owner too long", f"{field}.owner")
    _no_nul(card.owner, "owner", f"{field}.owner")
    _match(_SPIFFE, card.spiffe_id, "SPIFFE id", f"{field}.spiffe_id")
    _require(0 < len(card.skills) <= MAX_SKILLS, f"a card needs 1 to {MAX_SKILLS} skills", f"{field}.skills")
    names: set[str] = set()
    for index, skill in enumerate(card.skills):
        _validate_skill(skill, f"{field}.skills[{index}]")
        _require(
            skill.name not in names, f"skill {skill.name!r} appears twice", f"{field}.skills[{index}].name"
        )
        names.add(skill.name)
    return version


def validate_visibility_names(names: Sequence[str], field: str = "visibility.names") -> None:
    """Visibility names are at most ``MAX_NAMES`` ``namespace/name`` strings."""
    _require(len(names) <= MAX_NAMES, f"at most {MAX_NAMES} names ({len(names)} given)", field)
    for index, name in enumerate(names):
        _require(
            name.count("/") == 1 and len(name) <= MAX_NAME_LENGTH,
            f"visibility name {echo(name)} must be namespace/name",
            f"{field}[{index}]",
        )


def compile_patterns(
    patterns: Sequence[str], field: str = "visibility.patterns"
) -> tuple[VisibilityPattern, ...]:
    """Visibility regexes (bounded in count and length), or INVALID_ARGUMENT naming the bad one.

    RE2 (linear time; no backreferences or lookaround; at most ``MAX_PROGRAM_SIZE`` instructions) compiles each
    on first use: on the worker thread in ``AgentIndex.prepare_visibility``, whose INVALID_ARGUMENT names the
    pattern the same way; ``visibility.compile_all`` compiles them at once.
    """
    _require(len(patterns) <= MAX_PATTERNS, f"at most {MAX_PATTERNS} patterns ({len(patterns)} given)", field)
    compiled = []
    for index, pattern in enumerate(patterns):
        where = f"{field}[{index}]"
        _require(
            0 < len(pattern) <= MAX_PATTERN_LENGTH,
            f"pattern must be 1 to {MAX_PATTERN_LENGTH} characters",
            where,
        )
        try:
            compiled.append(compile_pattern(pattern))
        except PatternError as exc:
            raise refuse_pattern(index, pattern, str(exc)) from None
    return tuple(compiled)
