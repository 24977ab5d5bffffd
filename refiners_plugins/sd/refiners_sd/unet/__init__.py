"""SD1.5 and SDXL UNets built from Chains, their configs, name maps and diffusers weight I/O."""
