"""Live capture of a PyTorch process into the store."""
