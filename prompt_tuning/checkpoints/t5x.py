"""The T5X native checkpoint format: read lazily, write atomically.

A T5X checkpoint is a directory `.../checkpoint_<step>/` holding

* `checkpoint`: a msgpack file (flax.serialization) with
  `{"version": 3, "optimizer": {"target": <params>, "state": <opt state>}}`.
  Each leaf is either an inline numpy array (small, unpartitioned arrays such
  as layer-norm scales) or a tensorstore spec dict naming a zarr array;
* one zarr directory per large array, named `target.<dot.joined.path>` (e.g.
  `target.encoder.layers_0.attention.query.kernel`), with gzip- or
  zstd-compressed chunks; dtype float32 or bfloat16 (version 3 stores bfloat16
  natively; version 2 stored it as uint16, which we reject like T5X does).

Specs hold *relative* paths so a checkpoint can be moved: the `kvstore` path
(or, in files written with tensorstore < 0.1.14, a top-level `path`) is
relative to the checkpoint directory, and checkpoints written to GCS name a
placeholder bucket (`t5x-dummy-bucket`). `_rewrite_spec` turns a stored spec
into one that opens the array where the checkpoint actually is.

`read_t5x_checkpoint` returns `{"encoder/layers_0/attention/query/kernel":
LazyArray}`; nothing is read from a zarr array until `read(index)` is called,
and then only that slice, so each host of a multi-host restore reads only the
shards it holds.
"""

from __future__ import annotations

import copy
import os
import posixpath
import re
import threading
from typing import Any, Mapping

import ml_dtypes
import numpy as np
import tensorstore as ts
from flax import serialization

from prompt_tuning import files
from prompt_tuning.checkpoints import lazy

VERSION = 3
CHECKPOINT_FILE = "checkpoint"
# T5X writes GCS specs with this bucket and fills in the real one on restore.
DUMMY_BUCKET = "t5x-dummy-bucket"
# Largest zarr chunk we write (T5X aims for 64 MiB chunks too).
_CHUNK_BYTES = 64 * 1024 * 1024
_STEP_DIR = re.compile(r"checkpoint_(\d+)")
_CORRUPT_ARRAY = "a truncated or corrupt zarr array of a T5X checkpoint"


# ----------------------------------------------------------------------------
# Locating the checkpoint (local paths via os, gs:// via tensorstore kvstores,
# so that reading GCS needs no TensorFlow).
# ----------------------------------------------------------------------------


def _split_gs(path: str) -> tuple[str, str]:
  """'gs://bucket/a/b' -> ('bucket', 'a/b')."""
  m = re.fullmatch(r"gs://([^/]+)/?(.*)", path, re.DOTALL)
  if m is None:
    raise ValueError(f"bad GCS path {path!r}: expected gs://<bucket>/<path>.")
  return m.group(1), m.group(2).rstrip("/")


def _gcs_kvstore(path: str) -> ts.KvStore:
  bucket, prefix = _split_gs(path)
  return ts.KvStore.open({
      "driver": "gcs", "bucket": bucket, "path": prefix + "/" if prefix else ""
  }).result()


def _read_file(path: str, size: int = -1) -> bytes | None:
  """The bytes of file `path` (the first `size` if >= 0); None if missing."""
  if path.startswith("gs://"):
    directory, name = path.rsplit("/", 1)
    result = _gcs_kvstore(directory).read(name).result()
    if result.state != "value":
      return None
    return result.value if size < 0 else result.value[:size]
  if not os.path.isfile(path):
    return None
  with open(path, "rb") as f:
    return f.read(size)


def _step_dirs(run_dir: str) -> dict[int, str]:
  """{step: dir} for the `checkpoint_<step>/checkpoint` files in `run_dir`."""
  if run_dir.startswith("gs://"):
    # A kvstore lists keys recursively, so restrict the range to checkpoint_*.
    keys = _gcs_kvstore(run_dir).list(
        ts.KvStore.KeyRange(b"checkpoint_", b"checkpoint`")).result()
    names = {k.decode().split("/")[0] for k in keys
             if k.decode().endswith("/" + CHECKPOINT_FILE)}
  else:
    names = {n for n in os.listdir(run_dir)
             if os.path.isfile(os.path.join(run_dir, n, CHECKPOINT_FILE))}
  steps = {}
  for name in names:
    m = _STEP_DIR.fullmatch(name)  # skips unfinished `checkpoint_N.tmp-*` dirs
    if m:
      steps[int(m.group(1))] = posixpath.join(run_dir, name)
  return steps


def _checkpoint_header(directory: str) -> bytes | None:
  """The first bytes of `directory`'s `checkpoint` file, or None."""
  if not directory.startswith("gs://") and not os.path.isdir(directory):
    return None
  return _read_file(posixpath.join(directory, CHECKPOINT_FILE), 32)


def _enclosing_checkpoint_dir(path: str) -> tuple[str, bytes] | None:
  """(the nearest ancestor of `path` holding a `checkpoint` file, its
  header), so that any file of a checkpoint (a zarr chunk) names it. A file
  inside an Orbax checkpoint is an error that says so."""
  parent = posixpath.dirname(path)
  while parent and parent != path and parent not in ("gs:", "gs:/"):
    _raise_if_orbax(parent)
    header = _checkpoint_header(parent)
    if header is not None:
      return parent, header
    path, parent = parent, posixpath.dirname(parent)
  return None


def _checked(directory: str, header: bytes) -> str:
  """`directory` if its `checkpoint` file is T5X's; else a clear error."""
  _raise_if_orbax(directory)
  _check_msgpack(header, directory)
  return directory


def resolve_t5x_checkpoint_dir(path: str | os.PathLike) -> str:
  """The `checkpoint_N` directory that `path` names.

  `path` may be a `checkpoint_N` directory, its `checkpoint` file or any
  other file inside it, or a run directory holding `checkpoint_N`
  subdirectories (the largest N is chosen). Local paths come back absolute;
  `gs://` paths unchanged.

  Raises:
    FileNotFoundError: `path` does not exist.
    ValueError: `path` exists but holds no T5X checkpoint (an Orbax or
      TensorFlow one is named as such).
  """
  path = os.fspath(path).rstrip("/")
  is_gcs = path.startswith("gs://")
  if not is_gcs:
    path = os.path.abspath(path)
    if not os.path.exists(path):
      raise FileNotFoundError(
          f"T5X checkpoint path {path!r} does not exist; pass a checkpoint_N "
          "directory (or the run directory that holds checkpoint_N dirs).")
  header = _checkpoint_header(path)
  if header is not None:
    return _checked(path, header)
  steps = _step_dirs(path) if is_gcs or os.path.isdir(path) else {}
  if steps:
    newest = steps[max(steps)]
    return _checked(newest, _checkpoint_header(newest) or b"")
  _raise_if_orbax(path)
  if is_gcs or os.path.isfile(path):
    enclosing = _enclosing_checkpoint_dir(path)
    if enclosing is not None:
      return _checked(*enclosing)
  raise ValueError(
      f"not a T5X checkpoint: {path!r}; expected a msgpack file named "
      f"'{CHECKPOINT_FILE}' in it (or checkpoint_N subdirectories holding "
      "one). Pass the checkpoint_N directory that T5X wrote.")


# Files Orbax writes into a checkpoint directory (T5X's format has none).
_ORBAX_MARKERS = ("_METADATA", "_CHECKPOINT_METADATA", "manifest.ocdbt")
# How Orbax's msgpack aggregate file (older releases) refers to an array.
_ORBAX_PLACEHOLDER = "PLACEHOLDER://"


def _orbax_error(path: str, evidence: str) -> ValueError:
  return ValueError(
      f"{path!r} is an Orbax checkpoint ({evidence}), not a T5X one (T5X "
      f"writes a msgpack '{CHECKPOINT_FILE}' file of version >= 2 beside zarr"
      " arrays). Load a whole model from it with pt.load_pretrained(path) "
      "(Orbax checkpoints of {'params': ...} and training runs' "
      "checkpoint_<step> dirs); to take one variable, restore it with "
      "orbax.checkpoint.StandardCheckpointer().restore(path) and pass the "
      "array to initializers.from_array.")


def _raise_if_orbax(directory: str) -> None:
  if not directory.startswith("gs://") and not os.path.isdir(directory):
    return
  for marker in _ORBAX_MARKERS:
    if _read_file(posixpath.join(directory, marker), 1) is not None:
      raise _orbax_error(directory, f"it holds Orbax's {marker!r}")


def _has_orbax_placeholder(tree: Any) -> bool:
  if isinstance(tree, Mapping):
    return any(_has_orbax_placeholder(v) for v in tree.values())
  return isinstance(tree, str) and tree.startswith(_ORBAX_PLACEHOLDER)


def _check_msgpack(header: bytes, path: str) -> None:
  """Tells a T5X msgpack `checkpoint` from TF's text file of the same name."""
  if header.startswith(b"model_checkpoint_path"):
    raise ValueError(
        f"{path!r} holds a TensorFlow checkpoint, not a T5X one; convert it "
        "with T5X (or load the Hugging Face version of the model).")
  # A msgpack map starts with fixmap (0x80-0x8f), map16 (0xde) or map32 (0xdf).
  if not header or not (0x80 <= header[0] <= 0x8f or header[0] in (0xde, 0xdf)):
    raise ValueError(
        f"not a T5X checkpoint: {path!r}; its '{CHECKPOINT_FILE}' file is not "
        "a msgpack map. Pass the checkpoint_N directory that T5X wrote.")


def is_t5x_checkpoint(path: str | os.PathLike) -> bool:
  """Whether `path` is a T5X checkpoint_N dir (or a run dir holding some)."""
  try:
    resolve_t5x_checkpoint_dir(path)
    return True
  except (FileNotFoundError, ValueError):
    return False


# ----------------------------------------------------------------------------
# Reading.
# ----------------------------------------------------------------------------


def _np_dtype(name: Any) -> np.dtype:
  """A numpy dtype from a tensorstore ('bfloat16') or zarr ('<f4') name."""
  if name == "bfloat16":
    return np.dtype(ml_dtypes.bfloat16)
  return np.dtype(name)


def _rewrite_spec(spec: Mapping[str, Any], checkpoint_dir: str) -> dict:
  """Points a stored tensorstore spec at the array's real location.

  Pure (opens nothing, does not modify `spec`). Handles:
    * `kvstore: {driver: file|gfile|gcs, path: <relative>}` (tensorstore
      >= 0.1.14) and the older top-level `path` (with or without a kvstore);
    * relative paths, resolved against `checkpoint_dir`;
    * GCS: for a `gs://bucket/prefix` checkpoint_dir the result is a `gcs`
      kvstore in that bucket (the stored bucket, e.g. T5X's placeholder
      `t5x-dummy-bucket`, is dropped); for a local dir a `gcs` spec becomes a
      `file` one, so a checkpoint copied from GCS reads in place.

  Args:
    spec: a tensorstore spec leaf of the msgpack file, e.g. {"driver": "zarr",
      "kvstore": {"driver": "gfile", "path": "target.decoder.x.kernel"},
      "metadata": {"shape": [4, 8], "chunks": ..., "compressor": ...}}.
    checkpoint_dir: the checkpoint_N directory (local path or gs:// URL).

  Returns:
    A spec with `kvstore: {driver: file, path: <abs>}` or `kvstore: {driver:
    gcs, bucket: <real>, path: <prefix/rel>}`, no top-level path, and no
    `metadata.chunks/compressor` (the zarr dir's own .zarray is authoritative;
    T5X drops them too, so arrays re-chunked after writing still open).
  """
  spec = copy.deepcopy(dict(spec))
  if spec.get("driver") != "zarr":
    raise ValueError(
        f"unknown tensorstore driver {spec.get('driver')!r} in T5X spec "
        f"{spec}; only 'zarr' arrays are supported.")
  kvstore = spec.pop("kvstore", None) or {}
  if not isinstance(kvstore, Mapping):
    raise ValueError(f"unsupported kvstore {kvstore!r} in T5X spec; expected "
                     "a dict like {'driver': 'file', 'path': ...}.")
  driver = kvstore.get("driver", "file")  # old specs without kvstore: files
  if driver not in ("file", "gfile", "gcs"):
    raise ValueError(
        f"unknown kvstore driver {driver!r} in T5X spec; supported drivers "
        "are 'file', 'gfile' and 'gcs'.")
  # tensorstore joins a top-level path onto the kvstore path; so do we.
  rel = "/".join(p for p in (kvstore.get("path", "").rstrip("/"),
                             spec.pop("path", "").strip("/")) if p)
  if not rel:
    raise ValueError(f"T5X spec {spec} names no path; expected "
                     "kvstore.path (or a top-level path).")

  if rel.startswith("gs://"):  # an absolute GCS location: keep it.
    bucket, path = _split_gs(rel)
    spec["kvstore"] = {"driver": "gcs", "bucket": bucket, "path": path}
  elif checkpoint_dir.startswith("gs://"):
    bucket, prefix = _split_gs(checkpoint_dir)
    spec["kvstore"] = {"driver": "gcs", "bucket": bucket,
                       "path": posixpath.join(prefix, rel)}
  else:
    spec["kvstore"] = {"driver": "file", "path": os.path.join(
        os.path.abspath(checkpoint_dir), rel)}

  metadata = dict(spec.get("metadata") or {})
  metadata.pop("chunks", None)
  metadata.pop("compressor", None)
  spec["metadata"] = metadata
  return spec


class TensorStoreArray:
  """A zarr array of a T5X checkpoint, opened on first read (read-only).

  `shape` and `dtype` come from the spec when it records them (T5X's do), so
  building the parameter dict touches no zarr file.
  """

  def __init__(self, name: str, spec: dict):
    self.name = name
    self.spec = spec
    self._handle = None
    self._lock = threading.Lock()
    metadata = spec.get("metadata", {})
    self._shape = (tuple(int(n) for n in metadata["shape"])
                   if "shape" in metadata else None)
    dtype = spec.get("dtype", metadata.get("dtype"))
    self._dtype = _np_dtype(dtype) if dtype is not None else None

  def _open(self) -> ts.TensorStore:
    with self._lock:  # several threads may read shards of one array at once
      if self._handle is None:
        kvstore = self.spec["kvstore"]
        if kvstore["driver"] == "file" and not os.path.isdir(kvstore["path"]):
          raise FileNotFoundError(_missing_array_message(self.name, kvstore))
        try:
          self._handle = ts.open(self.spec, open=True, read=True).result()
        except ValueError as e:
          if "NOT_FOUND" in str(e):
            raise FileNotFoundError(
                _missing_array_message(self.name, kvstore)) from e
          raise corrupt_error(_where(kvstore), e, _CORRUPT_ARRAY) from e
      return self._handle

  @property
  def shape(self) -> tuple[int, ...]:
    return self._shape if self._shape is not None else tuple(
        self._open().shape)

  @property
  def dtype(self) -> np.dtype:
    return self._dtype if self._dtype is not None else _np_dtype(
        self._open().dtype.numpy_dtype)

  def read(self, index: lazy.Index) -> np.ndarray:
    index = lazy.normalize_index(index, self.shape)
    handle = self._open()
    try:
      return np.asarray(handle[index].read().result())
    except ValueError as e:  # e.g. a truncated or garbled zarr chunk
      raise corrupt_error(_where(self.spec["kvstore"]), e,
                          _CORRUPT_ARRAY) from e

  def __repr__(self):
    return f"TensorStoreArray({self.name!r}, {self.shape}, {self.dtype})"


def _where(kvstore: Mapping[str, Any]) -> str:
  return kvstore["path"] if kvstore["driver"] == "file" else (
      f"gs://{kvstore['bucket']}/{kvstore['path']}")


def _missing_array_message(name: str, kvstore: Mapping[str, Any]) -> str:
  where = _where(kvstore)
  return (f"the zarr array for {name!r} is missing at {where!r}; the T5X "
          "checkpoint is incomplete, copy the whole checkpoint_N directory.")


def corrupt_error(path: str, error: Any,
                  what: str = "a truncated or corrupt T5X checkpoint file"
                  ) -> ValueError:
  """One line for a checkpoint file that cannot be read: which file, what
  the reader said, and the fix."""
  if isinstance(error, UnicodeDecodeError):
    detail = (f"byte 0x{error.object[error.start]:02x} in a name is not "
              "UTF-8")
  else:
    lines = str(error).strip().splitlines()
    detail = lines[0] if lines else type(error).__name__
  if len(detail) > 200:
    detail = detail[:200] + "..."
  return ValueError(
      f"{path!r} is {what} ({detail}); copy the whole checkpoint_N directory "
      "again from its source (or re-save it with T5X).")


def _is_spec(node: Any) -> bool:
  return isinstance(node, Mapping) and "driver" in node and (
      "kvstore" in node or "path" in node)


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  out = {}
  for key, value in tree.items():
    name = f"{prefix}/{key}" if prefix else str(key)
    if isinstance(value, Mapping) and not _is_spec(value):
      out.update(_flatten(value, name))  # empty dicts (optax EmptyState) drop
    elif value is not None:
      out[name] = value
  return out


def read_t5x_checkpoint(path: str | os.PathLike, *, subtree: str = "target"
                        ) -> dict[str, lazy.LazyArray]:
  """Lazily reads one subtree (default: the params) of a T5X checkpoint.

  Args:
    path: a checkpoint_N dir, its `checkpoint` file or a run dir (newest
      checkpoint_N is used); local or gs://.
    subtree: the key under `optimizer` to read: "target" (params) or "state"
      (optimizer state). Other subtrees are skipped.

  Returns:
    {"token_embedder/embedding": LazyArray [vocab, emb], ...}: inline leaves
    as `lazy.InMemory`, zarr leaves as `TensorStoreArray` (float32 or
    ml_dtypes.bfloat16, as stored).
  """
  ckpt_dir = resolve_t5x_checkpoint_dir(path)
  raw = _read_file(posixpath.join(ckpt_dir, CHECKPOINT_FILE))
  if raw is None:  # raced with a deletion after resolving
    raise FileNotFoundError(f"{ckpt_dir!r} has no '{CHECKPOINT_FILE}' file.")
  checkpoint_file = posixpath.join(ckpt_dir, CHECKPOINT_FILE)
  try:
    contents = serialization.msgpack_restore(raw)
  except (ValueError, TypeError, KeyError, IndexError, OverflowError) as e:
    # msgpack: "Unpack failed: incomplete input" (truncated), a bad UTF-8
    # key ("'utf-8' codec can't decode byte 0xff"), "extra data", ...
    raise corrupt_error(checkpoint_file, e) from e
  if not isinstance(contents, Mapping) or not isinstance(
      contents.get("optimizer", {}), Mapping):
    raise corrupt_error(checkpoint_file, "the msgpack map is not T5X's "
                        "{'version', 'optimizer'} layout")
  if _has_orbax_placeholder(contents):
    raise _orbax_error(ckpt_dir, "its 'checkpoint' file is Orbax's msgpack "
                       "aggregate, with placeholders for the arrays")
  version = contents.get("version", 0)
  if version < 2 or "optimizer" not in contents:
    raise ValueError(
        f"T5X checkpoint {ckpt_dir!r} has version {version}; versions before "
        "2 are not supported, re-save it with a current T5X.")
  if not isinstance(contents["optimizer"].get(subtree, {}), Mapping):
    raise corrupt_error(checkpoint_file, f"optimizer/{subtree} is not a map")
  if subtree not in contents["optimizer"]:
    raise ValueError(
        f"T5X checkpoint {ckpt_dir!r} has no 'optimizer/{subtree}' subtree; "
        f"choose one of {sorted(contents['optimizer'])}.")

  out: dict[str, lazy.LazyArray] = {}
  for name, leaf in _flatten(contents["optimizer"][subtree]).items():
    if _is_spec(leaf):
      spec = _rewrite_spec(leaf, ckpt_dir)
      if spec["metadata"].get("dtype") == "<u2" or spec.get("dtype") == "uint16":
        raise ValueError(
            f"{name!r} in {ckpt_dir!r} is stored as uint16 (T5X version 2 "
            "bfloat16); re-save the checkpoint with T5X version 3.")
      out[name] = TensorStoreArray(name, spec)
    else:
      out[name] = lazy.InMemory(np.asarray(leaf))
  return out


# ----------------------------------------------------------------------------
# Writing.
# ----------------------------------------------------------------------------


def _flatten_params(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
  flat = {}
  for name, value in _flatten(params).items():
    name = "/".join(p for p in name.split("/") if p)
    if name in flat:
      raise ValueError(f"parameter {name!r} is given twice; pass each once.")
    flat[name] = np.asarray(value)
  return flat


def _unflatten(flat: Mapping[str, Any]) -> dict:
  tree: dict = {}
  for name, value in flat.items():
    *parents, leaf = name.split("/")
    node = tree
    for p in parents:
      node = node.setdefault(p, {})
      if not isinstance(node, dict):
        raise ValueError(f"{name!r} nests under a parameter; rename one.")
    if leaf in node:
      raise ValueError(f"{name!r} is both a parameter and a prefix; rename "
                       "one.")
    node[leaf] = value
  return tree


def _is_float(dtype: np.dtype) -> bool:
  return dtype.kind == "f" or dtype == np.dtype(ml_dtypes.bfloat16)


def _chunk_shape(shape: tuple[int, ...], itemsize: int) -> list[int]:
  """Whole array per chunk, halving the largest dim until <= 64 MiB."""
  chunks = [max(int(n), 1) for n in shape]
  while chunks and int(np.prod(chunks)) * itemsize > _CHUNK_BYTES:
    i = int(np.argmax(chunks))
    chunks[i] = -(-chunks[i] // 2)
  return chunks


def _write_zarr(array: np.ndarray, directory: str, compressor: dict) -> dict:
  """Writes `array` as a zarr dir; returns the `metadata` of its T5X spec."""
  dtype_name = ("bfloat16" if array.dtype == np.dtype(ml_dtypes.bfloat16)
                else array.dtype.name)
  store = ts.open({
      "driver": "zarr",
      "kvstore": {"driver": "file", "path": directory},
      "dtype": dtype_name,
      "metadata": {"shape": list(array.shape),
                   "chunks": _chunk_shape(array.shape, array.dtype.itemsize),
                   "compressor": compressor},
  }, create=True).result()
  store.write(array).result()
  metadata = store.spec().to_json()["metadata"]
  return {k: metadata[k] for k in ("chunks", "compressor", "dtype", "shape")}


def write_t5x_checkpoint(params: Mapping[str, Any],
                         checkpoint_dir: str | os.PathLike, *,
                         step: int = 0,
                         compression: str = "gzip",
                         dtype: Any = None,
                         inline_max_size: int = 64 * 1024) -> str:
  """Writes `params` as a T5X checkpoint directory, atomically.

  The layout is T5X's (version 3): a msgpack `checkpoint` file with
  `{"version": 3, "optimizer": {"target": params, "state": {"step": step}}}`
  where arrays of at most `inline_max_size` bytes are stored inline and larger
  ones as zarr directories `target.<dot.joined.path>` referenced by specs
  `{driver: zarr, kvstore: {driver: file, path: <relative dir>}, metadata}`.

  Everything is written into a temporary sibling directory that is renamed to
  `checkpoint_dir` at the end, so readers never see a partial checkpoint.

  Args:
    params: nested dict (or flat dict with '/' keys) of arrays.
    checkpoint_dir: the local directory to create, e.g. `.../checkpoint_1000`.
    step: stored as `optimizer/state/step` (int32).
    compression: zarr chunk compression, "gzip" or "zstd".
    dtype: if set (e.g. "bfloat16"), floating arrays are cast to it.
    inline_max_size: arrays with at most this many bytes go inline.

  Returns:
    The absolute checkpoint directory.

  Raises:
    FileExistsError: `checkpoint_dir` already exists (nothing is overwritten).
    ValueError: bad `compression`, a gs:// destination, or clashing names.
  """
  checkpoint_dir = os.fspath(checkpoint_dir)
  if checkpoint_dir.startswith("gs://"):
    raise ValueError(
        f"cannot write {checkpoint_dir!r}: write_t5x_checkpoint writes local "
        "directories only; write locally, then copy with `gsutil -m cp -r`.")
  compressors = {"gzip": {"id": "gzip", "level": 1},
                 "zstd": {"id": "zstd", "level": 3}}
  if compression not in compressors:
    raise ValueError(f"unknown compression {compression!r}; use 'gzip' or "
                     "'zstd'.")
  checkpoint_dir = os.path.abspath(checkpoint_dir.rstrip("/"))
  if os.path.exists(checkpoint_dir):
    raise FileExistsError(
        f"{checkpoint_dir!r} already exists; refusing to overwrite a "
        "checkpoint. Choose a new directory or delete the old one yourself.")

  flat = _flatten_params(params)
  if dtype is not None:
    target = _np_dtype(dtype)
    flat = {k: v.astype(target) if _is_float(v.dtype) else v
            for k, v in flat.items()}
  zarr_names = {}
  for name in flat:
    zarr_name = "target." + name.replace("/", ".")
    if zarr_name in zarr_names.values():
      raise ValueError(f"{name!r} and another parameter share the zarr dir "
                       f"{zarr_name!r}; rename one ('.' and '/' clash).")
    zarr_names[name] = zarr_name

  with files.staging_dir(checkpoint_dir) as tmp_dir:
    target_tree = {}
    for name, array in flat.items():
      if array.nbytes <= inline_max_size:
        target_tree[name] = array
        continue
      metadata = _write_zarr(array, os.path.join(tmp_dir, zarr_names[name]),
                             compressors[compression])
      target_tree[name] = {
          "driver": "zarr",
          "kvstore": {"driver": "file", "path": zarr_names[name]},
          "metadata": metadata,
      }
    contents = {
        "version": VERSION,
        "optimizer": {"target": _unflatten(target_tree),
                      "state": {"step": np.asarray(step, np.int32)}},
    }
    with open(os.path.join(tmp_dir, CHECKPOINT_FILE), "wb") as f:
      f.write(serialization.msgpack_serialize(contents))
    if os.path.exists(checkpoint_dir):  # appeared while we were writing
      raise FileExistsError(
          f"{checkpoint_dir!r} appeared while writing; refusing to overwrite "
          "it. Choose a new directory.")
    os.rename(tmp_dir, checkpoint_dir)
  return checkpoint_dir
