"""Stage `check_params`: validate the whole of params.yaml (stages/lib/infra/params.py).

dvc.yaml lists every key of params.yaml for this stage, so any edit reruns it first,
including keys no other stage lists (a typo, or `dvc exp run -S '+key=value'`), which would
otherwise rerun nothing and go unnoticed. An invalid file fails the run here, with one
message, before any other stage starts.
"""

from stages.lib.infra.errors import run_stage
from stages.lib.infra.params import load_params

if __name__ == "__main__":
    run_stage("check_params", load_params)
