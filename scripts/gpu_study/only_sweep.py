"""Run `capslib sweep` on a subset of an experiment's points (labels containing any of $CAPSLIB_ONLY,
'|'-separated), for library versions older than the CLI's --only. Keys are unchanged: the grid's
points are filtered, not altered."""
import os, sys
import torch

import capslib.experiments.sweeps as sw

# On a GPU: full float32 in cuDNN convolutions and matmuls, as on the CPU (PyTorch lets cuDNN use TF32).
torch.backends.cudnn.allow_tf32 = False
torch.backends.cuda.matmul.allow_tf32 = False

only = [s for s in os.environ["CAPSLIB_ONLY"].split("|") if s]
_orig = sw.get_experiment


def _filtered(name):
    exp = _orig(name)
    import copy
    grid = exp.grid
    sub = copy.copy(exp)
    object.__setattr__(sub, "grid", lambda profile: [p for p in grid(profile)
                                                     if any(o in (p.label or "") for o in only)])
    return sub


sw.get_experiment = _filtered
from capslib.cli import main  # noqa: E402
sys.exit(main(sys.argv[1:]))
