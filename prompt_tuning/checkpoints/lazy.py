"""Arrays that are read only when, and only where, they are needed.

Every checkpoint reader (T5X, Orbax, Hugging Face) turns a checkpoint into a
flat mapping `{"encoder/layers_0/attention/query/kernel": LazyArray}` in *our*
parameter names and layouts. Nothing is read until `read(index)` is called with
the slice one device holds, so a multi-host restore reads only local shards.
Layout changes between formats (a torch Linear's [out, in] weight, GPT-2's
fused qkv) are views that translate the index instead of copying the array.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Protocol, Sequence

import numpy as np

Index = tuple[slice, ...]


class LazyArray(Protocol):
  """A named array whose values are fetched slice by slice."""

  shape: tuple[int, ...]
  dtype: np.dtype

  def read(self, index: Index) -> np.ndarray:
    """Returns the values at `index` (one slice per dim, steps of 1)."""
    ...


def full_index(shape: Sequence[int]) -> Index:
  return tuple(slice(0, n) for n in shape)


def normalize_index(index: Index | None, shape: Sequence[int]) -> Index:
  """Replaces None/open ends with concrete bounds; rejects strides."""
  if index is None:
    return full_index(shape)
  index = tuple(index) + (slice(None),) * (len(shape) - len(index))
  out = []
  for s, n in zip(index, shape):
    start, stop, step = s.indices(n)
    if step != 1:
      raise ValueError(f"strided reads are not supported (index {index}).")
    out.append(slice(start, stop))
  return tuple(out)


def read_all(array: LazyArray) -> np.ndarray:
  return array.read(full_index(array.shape))


@dataclasses.dataclass(frozen=True)
class InMemory:
  """An array already in memory (small inline leaves, tests)."""

  value: np.ndarray

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.value.shape)

  @property
  def dtype(self) -> np.dtype:
    return self.value.dtype

  def read(self, index: Index) -> np.ndarray:
    return np.asarray(self.value[normalize_index(index, self.shape)])


@dataclasses.dataclass(frozen=True)
class FromCallable:
  """An array whose slices come from `fetch(index)` (tensorstore, safetensors)."""

  shape: tuple[int, ...]
  dtype: np.dtype
  fetch: Callable[[Index], np.ndarray]

  def read(self, index: Index) -> np.ndarray:
    return np.asarray(self.fetch(normalize_index(index, self.shape)))


@dataclasses.dataclass(frozen=True)
class Transposed:
  """`source` with its axes permuted: out.transpose(perm) layout."""

  source: LazyArray
  perm: tuple[int, ...] = (1, 0)

  @property
  def shape(self) -> tuple[int, ...]:
    return tuple(self.source.shape[p] for p in self.perm)

  @property
  def dtype(self) -> np.dtype:
    return self.source.dtype

  def read(self, index: Index) -> np.ndarray:
    index = normalize_index(index, self.shape)
    source_index = [None] * len(self.perm)
    for out_axis, src_axis in enumerate(self.perm):
      source_index[src_axis] = index[out_axis]
    return np.transpose(self.source.read(tuple(source_index)), self.perm)


@dataclasses.dataclass(frozen=True)
class Sliced:
  """`source[start:stop]` along `axis` (e.g. q, k or v out of fused qkv)."""

  source: LazyArray
  axis: int
  start: int
  stop: int

  @property
  def shape(self) -> tuple[int, ...]:
    shape = list(self.source.shape)
    shape[self.axis] = self.stop - self.start
    return tuple(shape)

  @property
  def dtype(self) -> np.dtype:
    return self.source.dtype

  def read(self, index: Index) -> np.ndarray:
    index = list(normalize_index(index, self.shape))
    s = index[self.axis]
    index[self.axis] = slice(s.start + self.start, s.stop + self.start)
    return self.source.read(tuple(index))
