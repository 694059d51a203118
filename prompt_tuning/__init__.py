"""prompt_tuning: steer frozen pretrained LMs with small learned parameters.

The notebook API (see README.md):

  import prompt_tuning as pt
  model, variables = pt.load_pretrained(path)
  model.score_batch(variables["params"], batch)

Importing this package loads only jax/flax/optax/orbax/numpy/gin: TensorFlow,
seqio and TFDS are needed only by the data pipeline and `prompt_tuning.tasks`.
"""

from prompt_tuning.checkpoints.loader import load_pretrained
from prompt_tuning.model_wrappers import DecoderOnlyModel
from prompt_tuning.model_wrappers import DecodingOptions
from prompt_tuning.model_wrappers import EncoderDecoderModel
from prompt_tuning.model_wrappers import build_model
from prompt_tuning.models.configs import TransformerConfig

__all__ = [
    "DecoderOnlyModel", "DecodingOptions", "EncoderDecoderModel",
    "TransformerConfig", "build_model", "load_pretrained",
]
