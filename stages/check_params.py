"""Stage `check_params`: validate the whole of params.yaml (stages/lib/infra/params.py), and
what else can be known before any stage runs.

dvc.yaml lists every key of params.yaml for this stage, so any edit reruns it first,
including keys no other stage lists (a typo, or `dvc exp run -S '+key=value'`), which would
otherwise rerun nothing and go unnoticed. An invalid file fails the run here, with one
message, before any other stage starts, and so before DVC deletes any stage's outputs (it
deletes them as it starts that stage): a failed `dvc repro` or `dvc exp run` leaves the
last good outputs in place.

Checked besides the params: `base.device: cuda` needs a GPU torch can see;
`base.kernels: portable` an x86-64 CPU with AVX2; a `data.source` folder must exist in an
accepted layout; `train_cnn.weights` must name a weights file whose bytes match the hash its
name carries and which holds `train_cnn.arch`'s weights; OMP_NUM_THREADS and MNIST_DEADLINE, when set,
must be numbers.
"""

from stages.lib.data.sources import check_source
from stages.lib.infra.device import resolve_device
from stages.lib.infra.errors import run_stage
from stages.lib.infra.kernels import check_setting
from stages.lib.infra.params import Params, load_params
from stages.lib.infra.threads import choose_threads


def check_environment(params: Params) -> None:
    """What would fail a later stage for a reason known now, as that stage would say it."""
    if params.base.device == "cuda":
        resolve_device("cuda")
    choose_threads(params.base.threads)
    check_setting(params.base.kernels)
    check_source(params.data.source)
    if params.train_cnn.weights != "none":
        # here, not at the top: reading weights needs torch, which validating params does not
        from stages.lib.learning.pretrained import load_weights

        load_weights(params.train_cnn.weights, params.train_cnn.arch)


def main() -> None:
    check_environment(load_params())


if __name__ == "__main__":
    run_stage("check_params", main)
