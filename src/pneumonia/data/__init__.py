"""From the RSNA dataset (real, a local copy or the phantom) to the split arrays: the first three stages."""
