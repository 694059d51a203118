"""Shared pytest fixtures."""

from pathlib import Path

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
