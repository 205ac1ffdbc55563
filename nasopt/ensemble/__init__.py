"""From trials to one model: selection, calibration, export and deployment."""
