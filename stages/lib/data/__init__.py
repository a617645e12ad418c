"""Data, in the order it flows: a source (sources.py: mirrors, the offline sample, local
folders) -> data/raw (raw.py: its file names, its manifest, idx.py: the IDX format) ->
data/tensors (splits.py builds the splits, tensors.py is what every model stage reads)."""
