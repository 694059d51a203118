"""Parameter-efficient methods: soft prompts, KV prefixes, MSP, multitask
prompts, multitask prompt tuning (MPT) and model tuning (see
docs/design.md §3).

Every method and initializer factory is gin-configurable, so gin files can
write `METHOD = @PromptTuning()` and
`PromptTuning.initializer = @from_sampled_vocab()`.
"""

import gin

from prompt_tuning.methods import initializers

for _factory in (initializers.uniform, initializers.normal,
                 initializers.xavier_uniform_per_slice,
                 initializers.from_sampled_vocab,
                 initializers.from_class_labels, initializers.from_text,
                 initializers.from_npy, initializers.from_array,
                 initializers.from_t5x_checkpoint):
  # Registered under their own module, prompt_tuning.methods.initializers.
  gin.external_configurable(_factory)
