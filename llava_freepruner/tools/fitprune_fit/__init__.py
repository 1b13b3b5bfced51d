"""Fitting FitPrune recipes from attention statistics (the ``fitprune-fit`` command)."""
