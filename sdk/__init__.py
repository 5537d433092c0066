"""Agentic Mesh: a gRPC service mesh of AI agents."""
