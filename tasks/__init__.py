"""seqio tasks live here; registered by later issues."""
