"""PyTorch networks and their maths only (GEM, the ViT-H of ViTPose/HMR2, body model); no file formats beyond
checkpoint loading. Filled by the GEM (issue #3) and perception (issue #4) work."""
