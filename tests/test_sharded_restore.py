"""Restore straight into target shardings on a 2x4 mesh of simulated devices.

Each parameter is placed with the sharding its logical axes map to, every
device shard equals the matching slice of the checkpoint, the reader is asked
only for shard-sized slices (never the whole vocabulary table), and the
sharded model computes the same logits as the single-device one.
"""

import flax
import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

import prompt_tuning as pt
from prompt_tuning import partitioning
from prompt_tuning.checkpoints import lazy
from prompt_tuning.checkpoints import loader
from prompt_tuning.checkpoints import t5x

pytestmark = pytest.mark.skipif(
    jax.device_count() < 8,
    reason="needs 8 devices: XLA_FLAGS=--xla_force_host_platform_device_count"
           "=8 (tests/conftest.py sets it before jax starts)")


@pytest.fixture(scope="module")
def mesh():
  return partitioning.make_mesh(data=2, model=4)


class _RecordingArray:
  """Wraps a LazyArray and records every index it is asked for."""

  def __init__(self, array, log):
    self._array, self._log = array, log
    self.shape, self.dtype = array.shape, array.dtype

  def read(self, index):
    self._log.append(tuple(s.stop - s.start for s in
                           lazy.normalize_index(index, self.shape)))
    return self._array.read(index)


def _check_shards(params, reference):
  for name, value in flax.traverse_util.flatten_dict(params, sep="/").items():
    full = reference[name]
    for shard in value.addressable_shards:
      np.testing.assert_array_equal(np.asarray(shard.data), full[shard.index],
                                    err_msg=name)


def test_t5x_fixture_restores_into_2x4_mesh(shared_fixtures, mesh,
                                            monkeypatch):
  path = str(shared_fixtures / "t5x_t5_1_1_tiny/checkpoint_3")
  reads = {}
  real_reader = t5x.read_t5x_checkpoint

  def recording_reader(p):
    arrays = real_reader(p)
    return {n: _RecordingArray(a, reads.setdefault(n, []))
            for n, a in arrays.items()}

  monkeypatch.setattr(loader.t5x, "read_t5x_checkpoint", recording_reader)
  _, variables = pt.load_pretrained(path, config="t5_1_1_tiny", mesh=mesh)
  params = variables["params"]

  embedding = params["token_embedder"]["embedding"]
  assert embedding.sharding.spec == P("model", None)
  assert params["decoder"]["logits_dense"]["kernel"].sharding.spec == P(
      None, "model")
  assert params["encoder"]["layers_0"]["mlp"]["wo"]["kernel"].sharding.spec \
      == P("model", None)
  assert params["encoder"]["encoder_norm"]["scale"].sharding.spec == P(None)
  # 2 heads do not divide the 4-way model axis: replicated, not an error.
  assert params["encoder"]["relpos_bias"]["rel_embedding"].sharding.spec == P(
      None, None)
  # Each vocabulary-sharded read is a quarter of the table, never all of it.
  assert set(reads["token_embedder/embedding"]) == {(32128 // 4, 4)}
  _check_shards(params, {n: lazy.read_all(a)
                         for n, a in real_reader(path).items()})


def test_hf_model_restores_into_2x4_mesh_and_computes_the_same(hf_tmp, mesh):
  pytest.importorskip("torch")
  import hf_models  # pylint: disable=g-import-not-at-top
  _, path = hf_models.tiny_t5_v1_1(hf_tmp, "sharded")
  model, single = pt.load_pretrained(path)
  _, sharded = pt.load_pretrained(path, mesh=mesh)
  params = sharded["params"]
  assert params["encoder"]["layers_1"]["attention"]["query"]["kernel"] \
      .sharding.spec == P(None, "model")
  assert len(params["token_embedder"]["embedding"].sharding.device_set) == 8
  _check_shards(params, {
      n: np.asarray(v) for n, v in
      flax.traverse_util.flatten_dict(single["params"], sep="/").items()})

  rng = np.random.default_rng(0)
  batch = {"encoder_input_tokens": rng.integers(2, 128, (4, 6), np.int32),
           "decoder_input_tokens": rng.integers(2, 128, (4, 5), np.int32),
           "decoder_target_tokens": rng.integers(2, 128, (4, 5), np.int32)}
  with jax.set_mesh(mesh), flax.linen.logical_axis_rules(
      partitioning.LOGICAL_AXIS_RULES):
    sharded_logits = jax.jit(model.compute_logits)(params, batch)
  np.testing.assert_allclose(
      sharded_logits, model.compute_logits(single["params"], batch),
      atol=1e-5)
