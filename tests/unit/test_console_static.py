"""The console's pages keep to its CSP (no inline script or style) and its scripts never parse data as HTML."""

from __future__ import annotations

import re
from pathlib import Path

import grpc

from agentmesh.services.gateway.console._api import http_status
from agentmesh.services.gateway.console._app import CONTENT_SECURITY_POLICY, STATIC


def test_pages_have_no_inline_script_or_style() -> None:
    pages = sorted(STATIC.glob("*.html"))
    assert {p.name for p in pages} == {"login.html", "marketplace.html", "task.html", "tasks.html"}
    for page in pages:
        html = page.read_text()
        for tag in re.findall(r"<script\b[^>]*>", html):
            assert 'src="/static/' in tag, (page.name, tag)
        assert "<style" not in html and "style=" not in html, page.name
        assert not re.search(r"\son[a-z]+=", html), page.name  # no inline event handlers


def test_scripts_never_parse_data_as_html() -> None:
    for script in sorted(STATIC.glob("*.js")):
        source = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
            assert sink not in source, (script.name, sink)


def test_the_policy_forbids_inline_script_and_framing() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["script-src"] == "'self'" and directives["style-src"] == "'self'"
    assert directives["object-src"] == "'none'" and directives["frame-ancestors"] == "'none'"
    assert directives["base-uri"] == "'none'"


def test_gateway_codes_become_http_statuses() -> None:
    assert http_status(grpc.StatusCode.UNAUTHENTICATED) == 401
    assert http_status(grpc.StatusCode.PERMISSION_DENIED) == 403
    assert http_status(grpc.StatusCode.RESOURCE_EXHAUSTED) == 429
    assert http_status(grpc.StatusCode.INTERNAL) == 502
    assert Path(STATIC).is_dir()
