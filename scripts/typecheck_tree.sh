#!/usr/bin/env bash
# Lay the agentmesh.* import names out as links under build/typecheck, for mypy ([tool.mypy] mypy_path).
# mypy cannot follow the editable install, whose import hook maps them onto the source folders as
# [tool.setuptools] package-dir says: agentmesh = sdk, agentmesh.services = services, agentmesh.agents = agents.
set -euo pipefail
cd "$(dirname "$0")/.."
tree=build/typecheck/agentmesh
mkdir -p "$tree"
for source in sdk/* services agents; do
  name=$(basename "$source")
  [ "$name" = __pycache__ ] && continue
  ln -sfn "../../../$source" "$tree/$name"
done
find "$tree" -maxdepth 1 -xtype l -delete  # a module that was removed or renamed
