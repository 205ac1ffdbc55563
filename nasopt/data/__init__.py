"""The data layer's public face: sources, their caches, and the splits a study trains on.

    from nasopt.data import SOURCES, load_data, study_sets

Everything not listed in ``__all__`` is internal to its module. Preparing a cache is
``nasopt.data.prepare.prepare``: exported here under that name, the function would hide its
own module. Importing this package stays cheap (no SimpleITK, SciPy, scikit-learn or pylidc):
the study file reads the source table at every start of the command line.
"""

from nasopt.data.contract import Input, Run, Source
from nasopt.data.labels import DEFAULT_POLICY, LabelPolicy
from nasopt.data.noduleset import CROP_SIZE, NoduleSet
from nasopt.data.prepare import cache_path, load_data
from nasopt.data.sources import SOURCES, get_source, register_source
from nasopt.data.splits import StudySets, outer_folds, study_sets

__all__ = [
    "CROP_SIZE",
    "DEFAULT_POLICY",
    "SOURCES",
    "Input",
    "LabelPolicy",
    "NoduleSet",
    "Run",
    "Source",
    "StudySets",
    "cache_path",
    "get_source",
    "load_data",
    "outer_folds",
    "register_source",
    "study_sets",
]
