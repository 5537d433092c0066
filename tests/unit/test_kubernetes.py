"""deploy/kubernetes validates offline against the Kubernetes schemas and keeps the production promises."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

BASE = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "base"
KUBERNETES_VERSION = "1.30"


def _documents() -> list[tuple[str, dict[str, Any]]]:
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    found = []
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((BASE / name).read_text()):
            found.append((name, doc))
    return found


DOCUMENTS = _documents()


def _of_kind(kind: str) -> dict[str, dict[str, Any]]:
    return {doc["metadata"]["name"]: doc for _, doc in DOCUMENTS if doc["kind"] == kind}


def test_kustomization_lists_every_manifest_in_the_folder() -> None:
    listed = set(yaml.safe_load((BASE / "kustomization.yaml").read_text())["resources"])
    on_disk = {p.name for p in BASE.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == on_disk


@pytest.mark.parametrize(
    "doc", [doc for _, doc in DOCUMENTS], ids=[f"{f}:{d['kind']}/{d['metadata']['name']}" for f, d in DOCUMENTS]
)
def test_every_manifest_is_valid_kubernetes(doc: dict[str, Any]) -> None:
    kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)


def test_the_validator_rejects_a_broken_manifest() -> None:
    deployment = yaml.safe_load(yaml.safe_dump(_of_kind("Deployment")["registry"]))
    deployment["spec"]["replicas"] = "two"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, KUBERNETES_VERSION, strict=True)


def test_every_mesh_deployment_is_probed_by_grpc_health_with_its_own_certificate() -> None:
    for name, deployment in _of_kind("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        probe = container["readinessProbe"]
        if name == "triton":
            assert probe["httpGet"]["path"] == "/v2/health/ready"
            continue
        command = probe["exec"]["command"]
        assert command[:2] == ["agentmesh", "health"], name
        assert command[2].endswith(str(container["ports"][0]["containerPort"])), name
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod["volumes"] if "secret" in v}
        assert secrets["tls"] == f"agentmesh-cert-{name}", name
        mount = next(m for m in container["volumeMounts"] if m["name"] == "tls")
        assert mount["readOnly"] is True


def test_registry_and_planner_are_replicated_and_protected_by_disruption_budgets() -> None:
    deployments, budgets = _of_kind("Deployment"), _of_kind("PodDisruptionBudget")
    for name in ("registry", "planner"):
        assert deployments[name]["spec"]["replicas"] >= 2
        assert budgets[name]["spec"]["minAvailable"] >= 1
        assert _of_kind("Service")[name]["spec"]["clusterIP"] == "None"  # one DNS name, every replica


def test_triton_runs_on_gpu_nodes() -> None:
    triton = _of_kind("Deployment")["triton"]["spec"]["template"]["spec"]
    resources = triton["containers"][0]["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert any(t["key"] == "nvidia.com/gpu" for t in triton["tolerations"])


def test_migrations_run_as_a_job_against_an_external_database_by_url() -> None:
    job = _of_kind("Job")["agentmesh-migrate"]
    container = job["spec"]["template"]["spec"]["containers"][0]
    assert container["args"] == ["db", "upgrade"]
    (url,) = [e for e in container["env"] if e["name"] == "AGENTMESH_DATABASE_URL"]
    assert url["valueFrom"]["secretKeyRef"]["name"] == "agentmesh-database"


def test_network_policies_deny_by_default_and_open_only_the_mesh_paths() -> None:
    policies = _of_kind("NetworkPolicy")
    assert policies["default-deny"]["spec"]["podSelector"] == {}
    assert set(policies["default-deny"]["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    agents_from = policies["agents-ingress"]["spec"]["ingress"][0]["from"]
    assert agents_from == [{"podSelector": {"matchLabels": {"app.kubernetes.io/name": "planner"}}}]
    triton_from = policies["triton-ingress"]["spec"]["ingress"][0]["from"]
    assert triton_from == [{"podSelector": {"matchLabels": {"app.kubernetes.io/component": "agent"}}}]


def test_services_that_write_the_database_get_its_url_from_the_secret() -> None:
    deployments = _of_kind("Deployment")
    for name in ("registry", "planner", "gateway"):
        env = deployments[name]["spec"]["template"]["spec"]["containers"][0]["env"]
        (url,) = [e for e in env if e["name"] == "AGENTMESH_DATABASE_URL"]
        assert url["valueFrom"]["secretKeyRef"] == {"name": "agentmesh-database", "key": "url"}, name


def test_only_the_gateway_and_the_crm_agent_hold_the_pseudonym_key() -> None:
    holders = set()
    for name, deployment in _of_kind("Deployment").items():
        pod = deployment["spec"]["template"]["spec"]
        secrets = {v["name"]: v["secret"]["secretName"] for v in pod.get("volumes", []) if "secret" in v}
        if secrets.get("pseudonym") != "agentmesh-pseudonym":
            continue
        holders.add(name)
        (container,) = pod["containers"]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "pseudonym")
        env = {e["name"]: e.get("value") for e in container.get("env", [])}
        assert mount["readOnly"] is True
        assert env["AGENTMESH_PSEUDONYM_KEY_FILE"] == f"{mount['mountPath']}/key", name
    assert holders == {"gateway", "agent-crm"}
