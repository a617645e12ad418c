"""A user's own digit: prepare.py turns a photo or drawing into a 28×28 image the way MNIST's
were made; classify.py runs the trained checkpoints on it (`python -m stages.predict`); app.py
and page/ are the draw-a-digit web page and JSON API on the same two (`python -m stages.serve`)."""
