#!/usr/bin/env bash
# Install this project (editable) with the given extras into a venv: `scripts/pyinstall.sh .venv dev`.
#
# With uv when it can be had (parallel downloads and unpacking: ~45 s instead of ~2.5 min for `dev` on a cold
# cache), else with pip. uv reads no pip configuration, so the index, extra indexes, find-links and
# constraints pip is configured with (PIP_* variables, pip.conf) are handed to it, and it picks the best
# version across all of them as pip does. torch serves only the one-time ONNX export of MiniLM, on the CPU:
# a CPU build lying among find-links is preferred to the default (CUDA, several GB) build.
# uv compiles no bytecode; the modules the mesh's processes import are compiled here once, so that each of
# the ~10 processes of `agentmesh up` does not compile them again at every start (PYTHONDONTWRITEBYTECODE).
set -euo pipefail

venv=${1:?usage: scripts/pyinstall.sh VENV EXTRAS}
extras=${2:?usage: scripts/pyinstall.sh VENV EXTRAS}
py="$venv/bin/python"
root=$(cd "$(dirname "$0")/.." && pwd)

pip_setting() {  # a pip setting by name: PIP_<NAME> from the environment, else pip's configuration files
  local variable
  variable="PIP_$(echo "$1" | tr 'a-z-' 'A-Z_')"
  if [ -n "${!variable:-}" ]; then echo "${!variable}"; return; fi
  "$py" -m pip config get "install.$1" 2>/dev/null || "$py" -m pip config get "global.$1" 2>/dev/null || true
}

index_url=$(pip_setting index-url)
extra_index_urls=$(pip_setting extra-index-url)
find_links=$(pip_setting find-links)
constraints="$venv/constraints.txt"
: >"$constraints"
for file in $(pip_setting constraint); do cat "$file" >>"$constraints"; echo >>"$constraints"; done
tag=$("$py" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
for folder in $find_links; do
  for wheel in "${folder#file://}"/torch-*+cpu-"$tag"-*.whl; do
    [ -e "$wheel" ] || continue
    version=$(basename "$wheel" | cut -d- -f2)
    echo "torch==${version%%+*}  # the CPU build at $wheel" >>"$constraints"
    break 2
  done
done

if [ -x "$venv/bin/uv" ] || "$py" -m pip install -q uv; then
  args=(--python "$py" --index-strategy unsafe-best-match --constraint "$constraints")
  [ -n "$index_url" ] && args+=(--index-url "$index_url")
  for url in $extra_index_urls; do args+=(--extra-index-url "$url"); done
  for folder in $find_links; do args+=(--find-links "$folder"); done
  started=$SECONDS
  (cd "$root" && "$venv/bin/uv" pip install --quiet "${args[@]}" -e ".[$extras]")
  echo "installed .[$extras] with uv in $((SECONDS - started)) s; compiling what the mesh imports"
  started=$SECONDS
  # Bytecode for what the mesh's processes import, written by importing it once (every agentmesh module and
  # the Triton models' libraries): ~1,500 files instead of the ~17,000 of the whole venv. And the registry's
  # numba kernels into numba's on-disk cache, so the registry's first start does not compile them.
  env -u PYTHONDONTWRITEBYTECODE "$py" - <<'PYTHON' || echo "warming failed: the first start compiles instead"
import importlib, pkgutil
import agentmesh
for name in ("agentmesh.services", "agentmesh.agents", "onnxruntime", "tokenizers", "tritonclient.grpc.aio"):
    try:
        importlib.import_module(name)
    except Exception:
        pass
for root in (agentmesh, importlib.import_module("agentmesh.services"), importlib.import_module("agentmesh.agents")):
    for module in pkgutil.walk_packages(root.__path__, root.__name__ + ".", onerror=lambda name: None):
        # Not the Triton python-backend models (they import Triton's own utilities), nor __main__ (it runs).
        if ".models." not in module.name and not module.name.endswith(".__main__"):
            try:
                importlib.import_module(module.name)
            except (Exception, SystemExit):
                pass
from agentmesh.services.registry import _kernels
_kernels.warm()
PYTHON
  echo "compiled in $((SECONDS - started)) s"
else
  echo "uv could not be installed: installing with pip (slower)"
  "$py" -m pip install -q --upgrade pip
  (cd "$root" && "$py" -m pip install -q -c "$constraints" -e ".[$extras]")
fi
