"""Early stopping for multi-objective studies (MO-ASHA)."""
