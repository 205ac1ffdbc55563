"""Running a trained network or ensemble: the inference core, attention maps and predict."""
