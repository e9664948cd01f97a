"""The defaults of the three front ends, in one place, and why they differ.

Only ``n_clusters`` and ``max_iter`` differ; every other default (``tol``, ``init``, the
colour space, no spatial weight) is the same everywhere.

- **The Python API** (:func:`napari_kmeanz.kmeans`): k=8 and up to 100 rounds. A script
  wants the converged clustering; the relative tolerance (``tol=1e-4``) ends most runs long
  before 100 rounds (astronaut: 6 rounds for k=8, 28 for k=16), as scikit-learn's
  ``max_iter=300`` does.
- **The widget**: k=8 and up to 30 rounds. A user watches each round's preview and can
  press Cancel; 30 rounds bound a run on a large layer to seconds, and the tolerance stops
  most runs before them.
- **The command line**: k=50 and 5 rounds, the flags ``-k 50 -r 5`` of the first of the
  scripts the tool grew from (a 5-D k-means of a photo, written to quantise it finely and
  to save an image after each of a few rounds with ``-g``); its users' commands keep
  their meaning.
"""

API = {"n_clusters": 8, "max_iter": 100}
WIDGET = {"n_clusters": 8, "max_iter": 30}
CLI = {"n_clusters": 50, "max_iter": 5}
