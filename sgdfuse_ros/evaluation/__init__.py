"""Evaluation of the fusion pipeline against classical baselines and published methods' outputs.

* ``baselines``: pixel average, pixel maximum and Laplacian-pyramid fusion on grayscale images.
* ``run``: the ``sgdfuse evaluate`` command: fuse a dataset folder, compute every metric for us, the
  baselines and each peer (on exactly the images that peer covers), optional ablations.
* ``report``: markdown / JSON tables, contact sheet and bar chart.

Importing this package is cheap (no torch); ``run`` imports torch and the pipeline only when it fuses.
"""

from __future__ import annotations

__all__ = ["baselines", "report", "run"]
