"""The architecture search: space, objective, worker, samplers and pruners."""
