"""Imported first by the fixture and demo-training scripts: one CPU thread everywhere and no hub
access, for deterministic, modest runs. Only sets variables that are unset, and must run before
torch or tokenizers is imported."""

import os

for _name, _value in {
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "RAYON_NUM_THREADS": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "TRANSFORMERS_VERBOSITY": "error",
    "HF_HUB_OFFLINE": "1",
}.items():
    os.environ.setdefault(_name, _value)
