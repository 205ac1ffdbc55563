"""What people look at: figures, the study report, the evaluation figures and explanations."""
