"""What every stage leans on and none of the chapter is about: params.py (the schema of
params.yaml), errors.py (one clear line for bad input), files.py (atomic writes, digests),
torchio.py (.pt files), provenance.py (what each output was computed from), threads.py
(torch's thread count), experiments.py (DVC's experiment queue, driven from Python)."""
