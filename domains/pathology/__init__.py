"""pathology: whole-slide images (OpenSlide) tiled at a physical resolution, with tissue detection,
a per-slide tile-index cache, H&E stain jitter, and an embedded synthetic sample slide."""
