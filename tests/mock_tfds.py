"""`mock_tfds()`: seqio tasks over `tfds.testing.mock_data`, offline.

A helper module for the task tests, not tests. tfds' mock data has the
real features but no split metadata, so seqio's split-size lookup
(`LazyTfdsLoader.size`, used e.g. by proportional mixtures) fails; and
seqio memoizes builders in a class-level dict, so a builder made outside
the mock would leak into it (and a mocked one out of it). The context
manager clears that cache on entry and exit and reports `num_examples`
as every split's size.
"""

from __future__ import annotations

import contextlib
from typing import Iterator
from unittest import mock

import seqio
import tensorflow_datasets as tfds


@contextlib.contextmanager
def mock_tfds(num_examples: int = 8) -> Iterator[None]:
  loader = seqio.utils.LazyTfdsLoader
  loader._MEMOIZED_BUILDERS.clear()  # pylint: disable=protected-access
  try:
    with tfds.testing.mock_data(num_examples=num_examples), mock.patch.object(
        loader, "size", lambda self, split: num_examples):
      yield
  finally:
    loader._MEMOIZED_BUILDERS.clear()  # pylint: disable=protected-access
