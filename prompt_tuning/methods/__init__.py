"""Parameter-efficient methods (prompt tuning, prefixes, MSP, multitask)."""
