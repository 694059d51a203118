"""seqio tasks and mixtures, installed as `prompt_tuning.tasks`.

Importing this package registers every task below with seqio (TensorFlow
and seqio load here, never from `import prompt_tuning`):

* superglue.py: SuperGLUE in T5's text-to-text format (plain, taskless,
  task_index and rank-classification variants; proportional mixtures).
* glue.py: GLUE sst2, mrpc, qqp, rte and the zero-shot QQP <-> MRPC
  transfer tasks.
* translation.py: WMT14 En-De, WMT16 Ro-En, WMT20 En-Zh and TED, each in
  T5's encoder-decoder format and MSP's decoder-only format.
* demo.py: the shipped English-Spanish Bible demo (data/, public domain).
* bible.py: pretraining objectives (pretraining.py) on the shipped Bible
  corpus, and translation on the demo's held-out verses, in the shipped
  bases' SentencePiece vocabulary.
* bible_downstream.py: downstream tasks on that corpus, evaluated on its
  held-out verses: Spanish -> English in MSP's format, which part of the
  canon a verse is from, WEB vs KJV paraphrase by testament, and their
  rank-classification variants.

metrics.py holds the shared metric functions; vocabularies.py the
vocabularies, whose file paths are gin-configurable.
"""

from prompt_tuning.tasks import bible
from prompt_tuning.tasks import bible_downstream
from prompt_tuning.tasks import demo
from prompt_tuning.tasks import glue
from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import superglue
from prompt_tuning.tasks import translation
from prompt_tuning.tasks import vocabularies
