"""``calguide-sample`` with every denoiser forward counted from outside calguide.

    python tests/nfe_probe.py <calguide-sample overrides>

Wraps ADM's ``UNetModel.forward`` before the console script's ``main`` runs and, at exit,
writes the rows it evaluated to ``$CALGUIDE_NFE_OUT`` (JSON): what ran, counted at the network,
not read back from the config or from calguide's own record (tests/test_what_ran.py).
"""

from __future__ import annotations

import atexit
import json
import os
import sys
from pathlib import Path

from calguide.nets.unet import UNetModel

COUNT = {"rows": 0, "calls": 0}
_forward = UNetModel.forward


def _counted(self, x, *args, **kwargs):
    COUNT["rows"] += int(x.shape[0])
    COUNT["calls"] += 1
    return _forward(self, x, *args, **kwargs)


UNetModel.forward = _counted
atexit.register(lambda: Path(os.environ["CALGUIDE_NFE_OUT"]).write_text(json.dumps(COUNT)))

if __name__ == "__main__":
    from calguide.commands.sample import main

    sys.argv[0] = "calguide-sample"
    main()
