"""prompt_tuning: steer frozen pretrained LMs with small learned parameters.

The notebook API (see README.md):

  import prompt_tuning as pt
  model, variables = pt.load_pretrained(path, method=pt.PromptTuning(20))
  model.score_batch(variables["params"], batch)

Importing this package loads only jax/flax/optax/orbax/numpy/gin: TensorFlow,
seqio and TFDS are needed only by the data pipeline and `prompt_tuning.tasks`.
"""

from prompt_tuning import methods
from prompt_tuning import param_split
from prompt_tuning.checkpoints.export import export_prompt
from prompt_tuning.checkpoints.hf_export import export_model
from prompt_tuning.checkpoints.loader import load_pretrained
from prompt_tuning.checkpoints.shipped import list_pretrained
from prompt_tuning.methods import initializers
from prompt_tuning.methods.model_tuning import ModelTuning
from prompt_tuning.methods.mpt import MultitaskPromptTuning
from prompt_tuning.methods.msp import MultiStagePrompting
from prompt_tuning.methods.multitask import MultiTaskPrompt
from prompt_tuning.methods.prefix_tuning import PrefixTuning
from prompt_tuning.methods.prefix_tuning import fold
from prompt_tuning.methods.soft_prompt import PromptTuning
from prompt_tuning.model_wrappers import DecoderOnlyModel
from prompt_tuning.model_wrappers import DecodingOptions
from prompt_tuning.model_wrappers import EncoderDecoderModel
from prompt_tuning.model_wrappers import build_model
from prompt_tuning.models.configs import TransformerConfig

__all__ = [
    "DecoderOnlyModel", "DecodingOptions", "EncoderDecoderModel",
    "ModelTuning", "MultiStagePrompting", "MultiTaskPrompt",
    "MultitaskPromptTuning", "PrefixTuning", "PromptTuning",
    "TransformerConfig", "build_model", "export_model", "export_prompt",
    "fold", "initializers", "list_pretrained", "load_pretrained", "methods",
    "param_split",
]
