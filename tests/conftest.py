"""Shared test settings: every test gets its own state and cache directories."""

from __future__ import annotations

import os

import pytest


def require(problem: str | None, required: str, skipped: str) -> None:
    """Skip a tier that cannot run here, or fail it where BPFDEPLOY_REQUIRE_KERNEL=1 (CI) says it must run."""
    if problem:
        if os.environ.get("BPFDEPLOY_REQUIRE_KERNEL") == "1":
            pytest.fail(f"{required}: {problem}", pytrace=False)
        pytest.skip(f"{skipped}: {problem}")


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFDEPLOY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BPFDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
