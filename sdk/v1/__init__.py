"""Generated stubs of the agentmesh.v1 contract (``make gen``; never edited by hand)."""
