"""Shared test settings: every test gets its own state and cache directories."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_dirs(tmp_path, monkeypatch):
    monkeypatch.setenv("BPFDEPLOY_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("BPFDEPLOY_CACHE_DIR", str(tmp_path / "cache"))
