"""Shared pytest configuration: each area's fixtures live in tests/fixtures/<area>.py."""

pytest_plugins = [
    "tests.fixtures.postgres",
    "tests.fixtures.certs",
    "tests.fixtures.triton",
    "tests.fixtures.registry",
    "tests.fixtures.gateway",
    "tests.fixtures.planner",
    "tests.fixtures.planner_store",
]
