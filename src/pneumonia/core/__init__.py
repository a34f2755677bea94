"""What every stage shares: settings, errors, atomic outputs, model files, the backbone registry, scaling out."""
