"""Stage `train_linear`: fit the chapter's linear model with our Learner (params: train_linear)."""

from stages.lib.errors import run_stage
from stages.lib.params import load_params
from stages.lib.training import train_stage

if __name__ == "__main__":
    run_stage("train_linear", lambda: train_stage("linear", load_params()))
