"""Data the planner ships: its playbooks (YAML) and the published JSON Schemas of playbooks and plans."""
