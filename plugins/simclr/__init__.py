"""SimCLR: contrastive learning of two augmented views (Chen et al., 2020), on any modality."""
