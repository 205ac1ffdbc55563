"""nasopt: multi-objective architecture search for 3D pulmonary-nodule classifiers."""

__version__ = "0.1.0"
