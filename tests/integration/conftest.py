"""Every integration test runs with the session's admin key made (tests.conftest.Keys)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session", autouse=True)
def _session_keys(admin_key: str) -> str:
    return admin_key
