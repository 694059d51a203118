"""The T5X checkpoint format: the real fixture, round trips, specs, errors."""

import gzip
import itertools
import json
import os
from pathlib import Path

import ml_dtypes
import numpy as np
import orbax.checkpoint as ocp
import pytest
import tensorstore as ts
from flax import serialization

from prompt_tuning.checkpoints import lazy
from prompt_tuning.checkpoints import t5x

# The tiny T5.1.1 fixture: emb 4, 2 heads x 2, MLP 8, 2+2 layers, vocab 32128.
_ATTN = {"query", "key", "value", "out"}


def _expected_shapes():
  shapes = {
      "token_embedder/embedding": (32128, 4),
      "encoder/relpos_bias/rel_embedding": (2, 4),
      "encoder/encoder_norm/scale": (4,),
      "decoder/relpos_bias/rel_embedding": (2, 4),
      "decoder/decoder_norm/scale": (4,),
      "decoder/logits_dense/kernel": (4, 32128),
  }
  mlp = {"mlp/wi_0/kernel": (4, 8), "mlp/wi_1/kernel": (4, 8),
         "mlp/wo/kernel": (8, 4)}
  for i in range(2):
    enc = {f"encoder/layers_{i}/{k}": v for k, v in mlp.items()}
    enc.update({f"encoder/layers_{i}/{n}/scale": (4,)
                for n in ("pre_attention_layer_norm", "pre_mlp_layer_norm")})
    enc.update({f"encoder/layers_{i}/attention/{p}/kernel": (4, 4)
                for p in _ATTN})
    dec = {f"decoder/layers_{i}/{k}": v for k, v in mlp.items()}
    dec.update({f"decoder/layers_{i}/{n}/scale": (4,)
                for n in ("pre_self_attention_layer_norm",
                          "pre_cross_attention_layer_norm",
                          "pre_mlp_layer_norm")})
    dec.update({f"decoder/layers_{i}/{a}/{p}/kernel": (4, 4)
                for a in ("self_attention", "encoder_decoder_attention")
                for p in _ATTN})
    shapes.update(enc)
    shapes.update(dec)
  return shapes


def _decode_zarr_v2(directory: Path) -> np.ndarray:
  """Decodes a gzip zarr v2 array by hand (independent of tensorstore)."""
  meta = json.loads((directory / ".zarray").read_text())
  assert meta["compressor"]["id"] == "gzip" and meta["order"] == "C"
  assert not meta["filters"]
  shape, chunks = meta["shape"], meta["chunks"]
  dtype = np.dtype(meta["dtype"])
  sep = meta.get("dimension_separator", ".")
  out = np.zeros(shape, dtype)
  grid = [range(-(-n // c)) for n, c in zip(shape, chunks)]
  for key in itertools.product(*grid):
    # Zarr stores edge chunks full-size; crop them to the array bounds.
    raw = gzip.decompress((directory / sep.join(map(str, key))).read_bytes())
    chunk = np.frombuffer(raw, dtype).reshape(chunks)
    region = tuple(slice(k * c, min((k + 1) * c, n))
                   for k, c, n in zip(key, chunks, shape))
    out[region] = chunk[tuple(slice(0, s.stop - s.start) for s in region)]
  return out


@pytest.fixture
def fixture_ckpt(shared_fixtures):
  path = shared_fixtures / "t5x_t5_1_1_tiny" / "checkpoint_3"
  if not path.is_dir():
    pytest.skip(f"T5X fixture checkpoint not found at {path}")
  return path


def _msgpack(path: Path):
  return serialization.msgpack_restore((path / "checkpoint").read_bytes())


# ----------------------------------------------------------------------------
# The real fixture.
# ----------------------------------------------------------------------------


def test_fixture_names_and_shapes(fixture_ckpt):
  params = t5x.read_t5x_checkpoint(fixture_ckpt)
  assert {k: v.shape for k, v in params.items()} == _expected_shapes()
  assert all(v.dtype == np.float32 for v in params.values())
  # The big tables are zarr-backed, the layer-norm scales inline.
  assert isinstance(params["token_embedder/embedding"], t5x.TensorStoreArray)
  assert isinstance(params["decoder/logits_dense/kernel"],
                    t5x.TensorStoreArray)
  assert isinstance(params["encoder/relpos_bias/rel_embedding"],
                    lazy.InMemory)
  assert isinstance(params["encoder/encoder_norm/scale"], lazy.InMemory)


def test_fixture_exact_values(fixture_ckpt):
  params = t5x.read_t5x_checkpoint(fixture_ckpt)
  target = _msgpack(fixture_ckpt)["optimizer"]["target"]
  n_zarr = 0
  for name, array in params.items():
    leaf = target
    for part in name.split("/"):
      leaf = leaf[part]
    got = lazy.read_all(array)
    assert got.shape == array.shape and got.dtype == array.dtype, name
    if isinstance(leaf, dict):  # a tensorstore spec: decode the zarr by hand
      n_zarr += 1
      want = _decode_zarr_v2(fixture_ckpt / leaf["kvstore"]["path"])
    else:
      want = leaf
    np.testing.assert_array_equal(got, want, err_msg=name)
  assert n_zarr == 2 * 7 + 2 * 11 + 2  # every kernel, embedding, logits


def test_fixture_run_dir_and_checkpoint_file_resolve(fixture_ckpt):
  run_dir = fixture_ckpt.parent
  assert t5x.resolve_t5x_checkpoint_dir(run_dir) == str(fixture_ckpt)
  assert t5x.resolve_t5x_checkpoint_dir(
      fixture_ckpt / "checkpoint") == str(fixture_ckpt)
  assert t5x.is_t5x_checkpoint(run_dir)
  assert t5x.is_t5x_checkpoint(fixture_ckpt)
  assert not t5x.is_t5x_checkpoint(run_dir.parent)
  assert set(t5x.read_t5x_checkpoint(run_dir)) == set(_expected_shapes())


def test_fixture_any_file_inside_names_the_checkpoint(fixture_ckpt):
  """T5X users pass the msgpack file; a zarr file names its checkpoint too."""
  zarr = fixture_ckpt / "target.token_embedder.embedding"
  chunk = next(p for p in zarr.iterdir() if p.name != ".zarray")
  for inside in (fixture_ckpt / "checkpoint", zarr / ".zarray", chunk):
    assert t5x.resolve_t5x_checkpoint_dir(inside) == str(fixture_ckpt)
    assert t5x.is_t5x_checkpoint(inside)
  got = t5x.read_t5x_checkpoint(fixture_ckpt / "checkpoint")
  assert {k: v.shape for k, v in got.items()} == _expected_shapes()


def test_fixture_sliced_reads(fixture_ckpt):
  params = t5x.read_t5x_checkpoint(fixture_ckpt)
  emb = params["token_embedder/embedding"]  # chunks of 4096 rows
  full = lazy.read_all(emb)
  index = (slice(4000, 4200), slice(1, 3))  # crosses a chunk boundary
  np.testing.assert_array_equal(emb.read(index), full[index])
  logits = params["decoder/logits_dense/kernel"]
  index = (slice(2, 4), slice(8190, 12290))
  np.testing.assert_array_equal(logits.read(index),
                                lazy.read_all(logits)[index])
  scale = params["decoder/decoder_norm/scale"]
  np.testing.assert_array_equal(scale.read((slice(1, 3),)),
                                lazy.read_all(scale)[1:3])


def test_fixture_optimizer_state_subtree(fixture_ckpt):
  state = t5x.read_t5x_checkpoint(fixture_ckpt, subtree="state")
  assert int(lazy.read_all(state["step"])) == int(
      _msgpack(fixture_ckpt)["optimizer"]["state"]["step"])
  assert "param_states/token_embedder/embedding/v" in state
  with pytest.raises(ValueError, match="optimizer/nope"):
    t5x.read_t5x_checkpoint(fixture_ckpt, subtree="nope")


# ----------------------------------------------------------------------------
# Writing and round trips.
# ----------------------------------------------------------------------------


def _tiny_params(seed=0):
  rng = np.random.default_rng(seed)
  return {
      "token_embedder": {"embedding": rng.normal(size=(300, 16)).astype(
          np.float32)},  # 19 KB: zarr
      "encoder": {
          "layers_0": {"attention": {"query": {"kernel": rng.normal(
              size=(16, 8)).astype(np.float32)}}},  # 512 B: inline
          "encoder_norm": {"scale": np.ones((16,), np.float32)},
      },
      "counts": np.arange(5, dtype=np.int32),  # not a float: never cast
  }


def _flat(params, prefix=""):
  out = {}
  for k, v in params.items():
    name = f"{prefix}/{k}" if prefix else k
    out.update(_flat(v, name) if isinstance(v, dict) else {name: v})
  return out


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
@pytest.mark.parametrize("dtype", [None, "bfloat16"])
def test_round_trip(tmp_path, compression, dtype):
  params = _tiny_params()
  out = t5x.write_t5x_checkpoint(params, tmp_path / "checkpoint_7", step=7,
                                 compression=compression, dtype=dtype,
                                 inline_max_size=4096)
  assert out == str(tmp_path / "checkpoint_7")
  # Only the checkpoint dir is left (the temp dir was renamed).
  assert os.listdir(tmp_path) == ["checkpoint_7"]
  contents = _msgpack(tmp_path / "checkpoint_7")
  assert contents["version"] == 3
  assert int(contents["optimizer"]["state"]["step"]) == 7
  spec = contents["optimizer"]["target"]["token_embedder"]["embedding"]
  assert spec["driver"] == "zarr"
  assert spec["kvstore"] == {"driver": "file",
                             "path": "target.token_embedder.embedding"}
  assert spec["metadata"]["compressor"]["id"] == compression
  assert spec["metadata"]["shape"] == [300, 16]
  assert isinstance(contents["optimizer"]["target"]["encoder"]["layers_0"][
      "attention"]["query"]["kernel"], np.ndarray)

  got = t5x.read_t5x_checkpoint(tmp_path)  # the run dir resolves too
  want = _flat(params)
  assert set(got) == set(want)
  for name, value in want.items():
    if dtype is not None and value.dtype.kind == "f":
      value = value.astype(ml_dtypes.bfloat16)
    assert got[name].dtype == value.dtype, name
    read = lazy.read_all(got[name])
    assert read.dtype == value.dtype, name
    # Bit-exact, also for bfloat16.
    np.testing.assert_array_equal(read.view(np.uint8), value.view(np.uint8))
  emb = got["token_embedder/embedding"]
  assert isinstance(emb, t5x.TensorStoreArray)
  np.testing.assert_array_equal(
      emb.read((slice(10, 20), slice(3, 5))).view(np.uint8),
      lazy.read_all(emb)[10:20, 3:5].view(np.uint8))


def test_write_flat_keys_equals_nested(tmp_path):
  params = _tiny_params()
  t5x.write_t5x_checkpoint(_flat(params), tmp_path / "a", inline_max_size=0)
  got = t5x.read_t5x_checkpoint(tmp_path / "a")
  assert all(isinstance(v, t5x.TensorStoreArray) for v in got.values())
  for name, value in _flat(params).items():
    np.testing.assert_array_equal(lazy.read_all(got[name]), value)


def test_zarr_dir_readable_by_tensorstore_directly(tmp_path):
  params = _tiny_params()
  t5x.write_t5x_checkpoint(params, tmp_path / "c", inline_max_size=0)
  store = ts.open({"driver": "zarr", "kvstore": {
      "driver": "file",
      "path": str(tmp_path / "c" / "target.token_embedder.embedding")}},
                  open=True).result()
  np.testing.assert_array_equal(store.read().result(),
                                params["token_embedder"]["embedding"])


def test_nothing_read_until_read_and_handle_cached(tmp_path, monkeypatch):
  t5x.write_t5x_checkpoint(_tiny_params(), tmp_path / "c", inline_max_size=0)
  opened = []
  real_open = ts.open
  monkeypatch.setattr(t5x.ts, "open",
                      lambda *a, **k: opened.append(a) or real_open(*a, **k))
  got = t5x.read_t5x_checkpoint(tmp_path / "c")
  emb = got["token_embedder/embedding"]
  assert emb.shape == (300, 16) and emb.dtype == np.float32
  assert not opened  # names, shapes and dtypes come from the msgpack file
  emb.read((slice(0, 1), slice(0, 16)))
  emb.read((slice(5, 9), slice(0, 2)))
  assert len(opened) == 1
  assert opened[0][0]["kvstore"]["driver"] == "file"


def test_old_spec_layout_with_top_level_path(tmp_path):
  params = _tiny_params()
  ckpt = Path(t5x.write_t5x_checkpoint(params, tmp_path / "checkpoint_1",
                                       inline_max_size=0))
  contents = _msgpack(ckpt)

  def to_old(node):
    if isinstance(node, dict) and "driver" in node:
      old = {k: v for k, v in node.items() if k != "kvstore"}
      old["path"] = node["kvstore"]["path"]  # tensorstore < 0.1.14, no kvstore
      return old
    if isinstance(node, dict):
      return {k: to_old(v) for k, v in node.items()}
    return node

  contents["optimizer"]["target"] = to_old(contents["optimizer"]["target"])
  (ckpt / "checkpoint").write_bytes(serialization.msgpack_serialize(contents))
  assert "kvstore" not in _msgpack(ckpt)["optimizer"]["target"][
      "token_embedder"]["embedding"]
  got = t5x.read_t5x_checkpoint(ckpt)
  for name, value in _flat(params).items():
    np.testing.assert_array_equal(lazy.read_all(got[name]), value)


# ----------------------------------------------------------------------------
# Spec rewriting (pure; no network).
# ----------------------------------------------------------------------------

_META = {"chunks": [4, 4], "compressor": {"id": "gzip", "level": 1},
         "dtype": "<f4", "shape": [4, 4]}
_GS_DIR = "gs://my-bucket/runs/x/checkpoint_100"
_GS_KV = {"driver": "gcs", "bucket": "my-bucket",
          "path": "runs/x/checkpoint_100/target.encoder.q.kernel"}


@pytest.mark.parametrize("spec", [
    # What T5X writes on GCS: the placeholder bucket.
    {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket":
                                   t5x.DUMMY_BUCKET,
                                   "path": "target.encoder.q.kernel"}},
    # Older: bucket in the kvstore, the path at the top level.
    {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket":
                                   t5x.DUMMY_BUCKET},
     "path": "target.encoder.q.kernel"},
    # Written locally (file/gfile), read from GCS.
    {"driver": "zarr", "kvstore": {"driver": "gfile",
                                   "path": "target.encoder.q.kernel"}},
    {"driver": "zarr", "path": "target.encoder.q.kernel"},
])
def test_rewrite_spec_gcs_checkpoint(spec):
  spec = dict(spec, metadata=dict(_META))
  before = json.dumps(spec, sort_keys=True)
  out = t5x._rewrite_spec(spec, _GS_DIR)
  assert json.dumps(spec, sort_keys=True) == before  # input not modified
  assert out["kvstore"] == _GS_KV
  assert "path" not in out and out["driver"] == "zarr"
  # chunks/compressor come from the zarr dir itself (as in T5X).
  assert out["metadata"] == {"dtype": "<f4", "shape": [4, 4]}


def test_rewrite_spec_gcs_bucket_root():
  out = t5x._rewrite_spec(
      {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket":
                                     t5x.DUMMY_BUCKET, "path": "target.a"}},
      "gs://b/checkpoint_5/")
  assert out["kvstore"] == {"driver": "gcs", "bucket": "b",
                            "path": "checkpoint_5/target.a"}


@pytest.mark.parametrize("kvstore", [
    {"driver": "gfile", "path": "target.encoder.q.kernel"},
    {"driver": "file", "path": "target.encoder.q.kernel"},
    # Copied down from GCS: the placeholder bucket is irrelevant locally.
    {"driver": "gcs", "bucket": t5x.DUMMY_BUCKET,
     "path": "target.encoder.q.kernel"},
])
def test_rewrite_spec_local_checkpoint(tmp_path, kvstore):
  out = t5x._rewrite_spec({"driver": "zarr", "kvstore": kvstore,
                           "metadata": _META}, str(tmp_path / "checkpoint_3"))
  assert out["kvstore"] == {
      "driver": "file",
      "path": str(tmp_path / "checkpoint_3" / "target.encoder.q.kernel")}


def test_rewrite_spec_relative_checkpoint_dir_becomes_absolute(
    tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  out = t5x._rewrite_spec({"driver": "zarr", "kvstore": {
      "driver": "file", "path": "target.a"}}, "run/checkpoint_1")
  assert out["kvstore"]["path"] == str(tmp_path / "run/checkpoint_1/target.a")


@pytest.mark.parametrize("spec, match", [
    ({"driver": "zarr", "kvstore": {"driver": "s3", "path": "x"}}, "'s3'"),
    ({"driver": "n5", "kvstore": {"driver": "file", "path": "x"}}, "'n5'"),
    ({"driver": "zarr", "kvstore": {"driver": "file"}}, "no path"),
])
def test_rewrite_spec_errors(spec, match):
  with pytest.raises(ValueError, match=match):
    t5x._rewrite_spec(spec, "/tmp/checkpoint_1")


# ----------------------------------------------------------------------------
# Errors.
# ----------------------------------------------------------------------------


def test_missing_path(tmp_path):
  with pytest.raises(FileNotFoundError, match="does not exist"):
    t5x.read_t5x_checkpoint(tmp_path / "nope")
  assert not t5x.is_t5x_checkpoint(tmp_path / "nope")


def test_dir_without_checkpoint_file(tmp_path):
  (tmp_path / "checkpoint_4").mkdir()  # no msgpack inside: not a checkpoint
  (tmp_path / "other.txt").write_text("hi")
  for path in (tmp_path, tmp_path / "checkpoint_4", tmp_path / "other.txt"):
    with pytest.raises(ValueError, match="not a T5X checkpoint.*'checkpoint'"):
      t5x.read_t5x_checkpoint(path)
    assert not t5x.is_t5x_checkpoint(path)


def test_tensorflow_checkpoint_is_named(tmp_path):
  (tmp_path / "checkpoint").write_text('model_checkpoint_path: "model.ckpt"\n')
  with pytest.raises(ValueError, match="TensorFlow checkpoint"):
    t5x.read_t5x_checkpoint(tmp_path)
  assert not t5x.is_t5x_checkpoint(tmp_path)


def _orbax_dir(path):
  checkpointer = ocp.StandardCheckpointer()
  checkpointer.save(path, {"params": {"w": np.ones((4, 4), np.float32)}})
  checkpointer.wait_until_finished()
  return path


def test_orbax_dir_is_named_with_how_to_load_it(tmp_path):
  orbax = _orbax_dir(tmp_path / "orbax")
  # Older Orbax also wrote a msgpack 'checkpoint' aggregate file.
  legacy = tmp_path / "legacy"
  legacy.mkdir()
  (legacy / "checkpoint").write_bytes(serialization.msgpack_serialize(
      {"params": {"w": "PLACEHOLDER://params.w"}}))
  with_file = _orbax_dir(tmp_path / "with_file")
  (with_file / "checkpoint").write_bytes((legacy / "checkpoint").read_bytes())
  for path in (orbax, legacy, with_file, orbax / "_CHECKPOINT_METADATA"):
    with pytest.raises(ValueError, match=r"is an Orbax checkpoint \(.*\), "
                       r"not a T5X one.*pt\.load_pretrained\(path\)") as e:
      t5x.read_t5x_checkpoint(path)
    assert "version 0" not in str(e.value)
  assert not t5x.is_t5x_checkpoint(orbax)
  assert not t5x.is_t5x_checkpoint(with_file)


def test_run_dir_picks_newest_finished_step(tmp_path):
  for step in (2, 10):
    t5x.write_t5x_checkpoint({"w": np.full((2,), step, np.float32)},
                             tmp_path / f"checkpoint_{step}", step=step)
  (tmp_path / "checkpoint_20.tmp-123").mkdir()  # an unfinished save
  (tmp_path / "checkpoint_30").mkdir()  # no msgpack file yet
  assert t5x.resolve_t5x_checkpoint_dir(tmp_path) == str(
      tmp_path / "checkpoint_10")
  np.testing.assert_array_equal(
      lazy.read_all(t5x.read_t5x_checkpoint(tmp_path)["w"]), [10, 10])


def test_refuses_to_overwrite(tmp_path):
  ckpt = tmp_path / "checkpoint_0"
  t5x.write_t5x_checkpoint({"w": np.zeros((3,), np.float32)}, ckpt)
  before = (ckpt / "checkpoint").read_bytes()
  with pytest.raises(FileExistsError, match="refusing to overwrite"):
    t5x.write_t5x_checkpoint({"w": np.ones((3,), np.float32)}, ckpt)
  assert (ckpt / "checkpoint").read_bytes() == before
  assert sorted(os.listdir(tmp_path)) == ["checkpoint_0"]  # no temp dir left


def test_missing_zarr_dir_errors_on_read(tmp_path):
  ckpt = Path(t5x.write_t5x_checkpoint(_tiny_params(), tmp_path / "c",
                                       inline_max_size=0))
  for d in ckpt.glob("target.token_embedder.embedding"):
    for f in d.iterdir():
      f.unlink()
    d.rmdir()
  params = t5x.read_t5x_checkpoint(ckpt)  # lazy: fine until read
  with pytest.raises(FileNotFoundError,
                     match="'token_embedder/embedding' is missing"):
    lazy.read_all(params["token_embedder/embedding"])


def test_uint16_version2_arrays_rejected(tmp_path):
  ckpt = Path(t5x.write_t5x_checkpoint(
      {"w": np.zeros((4, 4), np.uint16)}, tmp_path / "c", inline_max_size=0))
  with pytest.raises(ValueError, match="uint16"):
    t5x.read_t5x_checkpoint(ckpt)


def test_write_errors(tmp_path):
  with pytest.raises(ValueError, match="compression"):
    t5x.write_t5x_checkpoint({"w": np.zeros(2)}, tmp_path / "a",
                             compression="lz4")
  with pytest.raises(ValueError, match="local"):
    t5x.write_t5x_checkpoint({"w": np.zeros(2)}, "gs://b/checkpoint_1")
  with pytest.raises(ValueError, match="share the zarr dir"):
    t5x.write_t5x_checkpoint({"a.b": {"c": np.zeros(2)}, "a": {"b.c": np.zeros(
        2)}}, tmp_path / "b")
  assert not os.listdir(tmp_path)
