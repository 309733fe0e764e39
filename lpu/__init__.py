"""lpu: generator of LPUs for ternary- and binary-weight language models."""
