"""The baselines of the paper's comparison: continued pretraining (`cpt`) and RPT's sparse reward (`rpt`)."""
