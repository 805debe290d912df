"""`hpnb.toyworld`: the toy world as the notebooks use it. The dataset itself lives in `hpnb.data.toyworld` (the
data layer); this module re-exports it with its figures (`hpnb.viz`) and its colour-statistics k-means
(`hpnb.baseline`), so that `hpnb.toyworld.ToyWorld`, `.make_scene`, `.preview`, `.colorize` and `.kmeans_proxy`
keep working.
"""

from hpnb.baseline import toyworld_colour_kmeans as kmeans_proxy
from hpnb.data.toyworld import (
    CLASSES,
    N_CLASSES,
    PALETTE,
    SPLITS,
    STUFF,
    THINGS,
    VERSION,
    ToyWorld,
    make_scene,
    normalise,
    patch_features,
    patch_histograms,
    textures,
    time_scenes,
)
from hpnb.viz import colorize_toyworld as colorize
from hpnb.viz import preview_toyworld as preview

__all__ = [
    "CLASSES",
    "N_CLASSES",
    "PALETTE",
    "SPLITS",
    "STUFF",
    "THINGS",
    "VERSION",
    "ToyWorld",
    "make_scene",
    "normalise",
    "patch_features",
    "patch_histograms",
    "textures",
    "time_scenes",
    "colorize",
    "preview",
    "kmeans_proxy",
]
