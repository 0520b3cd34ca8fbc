"""GEM (formerly GENMO) estimation engine, inference only: condition embedders, the RoPE transformer denoiser
and its DDIM/regression sampler, checkpoint loading, and the decoding of the 151-D motion vector into SMPL-X
body parameters in the camera and in a gravity-aligned world frame (with contact post-processing and IK).
It reproduces the behaviour of the GEM reference implementation (NVlabs/GENMO)."""
