"""Building blocks shared by several models: spacetime patches and positions (patches), attention with QK-norm
and RoPE (attention), timestep/prompt embedders and the frame-conditioning input (embedders). Nothing here
imports a model; the DiT, the 3D U-Net and the captioner import from here."""
