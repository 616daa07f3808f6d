"""Brain-age stage: age bins and the synthetic-cohort plan, regressors trained with and without synthetic brains, and their evaluation."""
