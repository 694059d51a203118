"""Shared pytest fixtures."""

import os
from pathlib import Path

# Eight simulated CPU devices for the mesh tests; must be set before jax is
# imported anywhere in the test session. Single-device code is unaffected.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import pytest

# Test data from peer projects lives next to the project root, not inside it
# (see ../shared/fixtures/README.md); a user's clone does not have it.
SHARED_FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures"


@pytest.fixture
def shared_fixtures() -> Path:
  """The `../shared/fixtures` folder, or skip when it is absent."""
  if not SHARED_FIXTURES.is_dir():
    pytest.skip(f"shared test fixtures not found at {SHARED_FIXTURES} "
                "(they sit next to the project root in the dev checkout only)")
  return SHARED_FIXTURES


@pytest.fixture(scope="session")
def hf_tmp(tmp_path_factory) -> Path:
  """One directory for the tiny Hugging Face models of the whole session."""
  return tmp_path_factory.mktemp("hf_models")
