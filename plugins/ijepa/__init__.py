"""I-JEPA (Assran et al., 2023): predict the EMA teacher's representations of target blocks from
a context block, in representation space, with no hand-crafted augmentation."""
