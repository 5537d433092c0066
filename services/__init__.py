"""Mesh services: registry, planner, gateway."""
