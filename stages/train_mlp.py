"""Stage `train_mlp`: fit the chapter's MLP with our Learner (params: train_mlp)."""

from stages.lib.errors import run_stage
from stages.lib.params import load_params
from stages.lib.training import train_stage

if __name__ == "__main__":
    run_stage("train_mlp", lambda: train_stage("mlp", load_params()))
