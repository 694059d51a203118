"""seqio tasks and mixtures, installed as `prompt_tuning.tasks`.

Importing this package registers every task below with seqio (TensorFlow
and seqio load here, never from `import prompt_tuning`):

* `demo_reverse_words` (demo.py): the synthetic README demo task.

metrics.py holds the tasks' metric functions; vocabularies.py the
gin-configurable vocabularies that gin files bind.
"""

from prompt_tuning.tasks import demo
from prompt_tuning.tasks import metrics
from prompt_tuning.tasks import vocabularies
