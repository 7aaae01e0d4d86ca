"""Evaluation of the fusion pipeline against classical baselines and published methods' outputs.

* ``baselines``: pixel average, pixel maximum and Laplacian-pyramid fusion on grayscale images.
* ``run``: the run behind ``sgdfuse evaluate``: fuse a dataset folder, compute every metric for us, the
  baselines and each peer (on exactly the images that peer covers), optional ablations.
* ``ablation``: the ablation variants (masks zeroed / eroded / dilated, no HFAH, other sampler settings) and
  the Stage II re-runs on captured inputs.
* ``command``: the command line of ``sgdfuse evaluate`` (arguments and entry point).
* ``report``: markdown / JSON tables, contact sheet and bar chart.

Importing this package is cheap (no torch); ``run``, ``ablation`` and ``command`` import torch and the pipeline
only when they fuse.
"""

from __future__ import annotations

__all__ = ["ablation", "baselines", "command", "report", "run"]
