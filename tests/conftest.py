"""Shared pytest fixtures."""

import os
from pathlib import Path

# Eight simulated CPU devices for the mesh tests; must be set before jax is
# imported anywhere in the test session. Single-device code is unaffected.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

import tempfile

import jax
import pytest

# Many tests compile the same small programs (a train step per run, the same
# decode loop per model); XLA's persistent cache turns repeats into loads.
# Subprocesses (the binaries' tests) inherit it through the environment.
_CACHE = os.environ.setdefault(
    "JAX_COMPILATION_CACHE_DIR",
    os.path.join(tempfile.gettempdir(), f"prompt_tuning_xla_cache_{os.getuid()}"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "0")
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)

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
