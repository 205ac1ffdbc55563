"""Fitting one network: the training loop and augmentation."""
