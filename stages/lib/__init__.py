"""The library the stages call, in five folders by what flows through them:

data/        MNIST from its sources to the tensors every model reads
learning/    the chapter's models, losses, optimizers, schedules and Learner
results/     metrics, the report and its figures, the summary, the seed study
own_digits/  a user's own picture of a digit, prepared as MNIST's were, and classified
infra/       params, errors, atomic files, provenance, threads, DVC's queue

A stage's dvc.yaml entry lists exactly the modules it imports (tests/test_pipeline.py).
"""
