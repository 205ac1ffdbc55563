"""Scoring a model: metrics, baselines, evaluate and crossval."""
