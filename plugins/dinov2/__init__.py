"""DINOv2 (Oquab et al., 2023): self-distillation with an EMA teacher, iBOT and KoLeo."""
