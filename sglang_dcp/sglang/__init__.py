"""SGLang glue: the only package of sglang_dcp that imports SGLang (a test enforces it)."""
