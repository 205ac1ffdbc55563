"""nasopt: multi-objective architecture search for 3D pulmonary-nodule classifiers."""

__version__ = "0.1.0"


def load_ensemble(path, device="cpu"):
    """An exported ensemble file as a torch module: HU crops (B, 1, 32, 32, 32) -> P(malignant) (B,).

    See :func:`nasopt.ensemble.load_ensemble`.
    """
    from nasopt.ensemble import load_ensemble as load

    return load(path, device)
