"""Stage `train_cnn`: the chapter's last step, a resnet18 from scratch trained with
fit_one_cycle by our Learner (params: train_cnn)."""

from stages.lib.errors import run_stage
from stages.lib.params import load_params
from stages.lib.training import train_stage

if __name__ == "__main__":
    run_stage("train_cnn", lambda: train_stage("cnn", load_params()))
