"""Installs `prompt_tuning`, with `tasks/` and `gin/` inside it.

The repository keeps seqio tasks in top-level `tasks/` and gin files in
top-level `gin/` (T5X habit). They install as `prompt_tuning.tasks` and
`prompt_tuning/gin/`, so nothing named `tasks` lands in site-packages and the
binaries find their gin files without `--gin_search_paths`, for both
`pip install .` and `pip install -e .`:

* `tasks/` is a package mapped through `package_dir`.
* `gin/` is data, reached through the symlink `prompt_tuning/gin -> ../gin`.
  It must not hold an `__init__.py`: from the repository root that would make
  it shadow the `gin` of gin-config. An editable install cannot map a folder
  without `__init__.py` to a subpackage, hence the symlink.
"""

import pathlib

import setuptools

# Lower bound: the API level the code relies on; upper bound: below the next
# release series that may break it (a minor for 0.x packages, else a major).
# Resolved together on Python 3.11: jax 0.10.2, flax 0.12.8, optax 0.2.8,
# orbax-checkpoint 0.12.8, seqio 0.0.20, tensorflow-datasets 4.9.10, ...
INSTALL_REQUIRES = [
    "jax>=0.10.0,<0.11",  # flax 0.12.8 needs jax>=0.10.0.
    "flax>=0.12.0,<0.13",
    "optax>=0.2.0,<0.3",
    "orbax-checkpoint>=0.12.0,<0.13",
    "gin-config>=0.5.0,<0.6",
    "seqio>=0.0.20,<0.1",  # Pulls tensorflow-text, hence tensorflow.
    "tensorflow-datasets>=4.9.0,<5",
    "sacrebleu>=2.0.0,<3",  # 2.0 introduced the metrics.BLEU API.
    "clu>=0.0.12,<0.1",  # Metric writers (TensorBoard summaries).
    "tensorboard>=2.16,<3",  # clu's TensorBoard writer imports it.
    "tqdm>=4.60,<5",
    "absl-py>=2.0,<3",  # The binaries' T5X-style flags.
    "regex>=2022.1.18",  # GPT-2's pre-tokenization pattern (\p{L}, \p{N}).
    "huggingface_hub>=1.0,<3",  # hf:// vocabulary defaults (GPT-2 BPE).
    "tensorstore>=0.1.84,<0.2",  # orbax-checkpoint 0.12.8 needs >=0.1.84.
    "msgpack>=1.0.0,<2",  # 1.0 changed unpacking defaults (raw=False).
    "numpy>=2.0,<3",  # jax 0.10 needs numpy>=2.0.
    "sentencepiece>=0.2.0,<0.3",  # seqio 0.0.20 needs >=0.2.
    "ml-dtypes>=0.5.0,<0.7",  # jax 0.10 needs >=0.5.0.
    # The serve binary's HTTP stack.
    "fastapi>=0.110,<1",
    "uvicorn>=0.29,<1",
    "prometheus-client>=0.20,<1",
]

TEST_REQUIRES = [
    "pytest>=8.0,<10",
    # The CPU wheel; on these machines pip takes it from a local file.
    "torch==2.13.0",
    # peft 0.21's prompt-learning generate() breaks on transformers 5.24,
    # which renamed forward's past_key_values to `cache`: PEFT's prefix is
    # ignored or mis-indexed. Raise both bounds together once a PEFT release
    # supports it (check: scripts/refresh_lock.py --report
    # --lift-upper-bounds transformers peft).
    "transformers>=5.0,<5.24",
    "peft>=0.21.0,<0.22",
    "safetensors>=0.8.0,<0.9",  # transformers 5.23 needs >=0.8.0.
    "matplotlib>=3.8,<4",  # The experiments' figures and the notebook's.
    # The suite executes notebooks/quickstart.ipynb.
    "nbclient>=0.10,<0.12",
    "nbformat>=5.9,<6",
    "ipykernel>=6.29,<8",
]

setuptools.setup(
    name="prompt_tuning",
    version="0.1.0",
    description=(
        "Steer frozen pretrained language models with small learned"
        " parameters: prompt tuning, prefix tuning, MSP, multitask prompts."
    ),
    long_description=pathlib.Path(__file__).with_name("README.md").read_text(
        encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="Apache-2.0",
    python_requires=">=3.11",  # jax 0.10, flax 0.12, orbax 0.12.8 need 3.11.
    packages=(
        setuptools.find_packages(include=["prompt_tuning", "prompt_tuning.*"])
        + ["prompt_tuning.tasks"]
    ),
    package_dir={"prompt_tuning.tasks": "tasks"},
    # bases/: the shipped T5X checkpoints (zarr keeps metadata in dotfiles).
    package_data={"prompt_tuning": ["gin/**/*.gin", "bases/**/*",
                                    "bases/**/.z*"],
                  "prompt_tuning.tasks": ["data/*"]},
    include_package_data=False,
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES},
    entry_points={
        "console_scripts": [
            "prompt_tuning.train = prompt_tuning.cli:train",
            "prompt_tuning.eval = prompt_tuning.cli:eval",
            "prompt_tuning.infer = prompt_tuning.cli:infer",
            "prompt_tuning.serve = prompt_tuning.cli:serve",
        ],
    },
)
