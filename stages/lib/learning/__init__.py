"""The chapter's learning: the models (models.py; similarity.py, the pixel-similarity
baseline), losses.py and predictions.py, optim.py (BasicOptim, Adam), schedules.py
(fit_one_cycle's), learner.py (our Learner), lr_find.py, and training.py, what the three
training stages do alike around their own recipe. speedups.py holds what makes the CNN fast,
kept out of the rest: the chapter reads without it."""
