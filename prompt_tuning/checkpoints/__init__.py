"""Checkpoint readers and writers (T5X, Orbax, Hugging Face)."""
