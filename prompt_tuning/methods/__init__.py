"""Parameter-efficient methods: soft prompts, KV prefixes, MSP, multitask
prompts and model tuning (see DESIGN.md)."""
