"""Agents shipped with the mesh, one per folder."""
