"""What a person reads after `dvc repro`: the report, the model card, overlays and image grids."""
