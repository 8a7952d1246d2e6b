"""``fmcore export``: the encoder in a run directory, checkpoint or federated round as a file of
its own, an fmcore encoder file or a timm VisionTransformer state dict."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fmcore.encoder_source import EncoderSource, read_encoder_source
from fmcore.errors import ConfigError, UnknownChoice
from fmcore.plugin_manager import Registry
from fmcore.run_files import DOMAIN_KEY, ENCODER_FORMAT, MODALITY_KEY, STEP_KEY
from fmcore.timm_layout import export_timm

SAFETENSORS = "safetensors"  # an fmcore encoder file, as a run's encoder.safetensors
TIMM = "timm"  # timm's VisionTransformer state dict (fmcore.timm_layout), 2D ViTs only
FORMATS = (SAFETENSORS, TIMM)


@dataclass(frozen=True)
class Export:
    source: EncoderSource
    out: Path
    format: str

    def describe(self) -> str:
        kind = ENCODER_FORMAT if self.format == SAFETENSORS else "timm VisionTransformer"
        metadata = self.source.metadata
        return (
            f"wrote {self.out} ({kind}: the {metadata[MODALITY_KEY]} encoder of"
            f" {metadata[DOMAIN_KEY]} after step {metadata[STEP_KEY]}) from {self.source.path}"
        )


def export_encoder(
    source: str | Path,
    out: Path,
    registry: Registry,
    format: str = SAFETENSORS,
    domain: str | None = None,
) -> Export:
    """Write the encoder ``source`` holds (``fmcore.encoder_source``) to ``out`` in ``format``;
    ``domain`` picks one domain's tokenizer from a round of a several-domain federation."""
    if format not in FORMATS:
        raise UnknownChoice("export format", format, FORMATS)
    read = read_encoder_source(source, registry, domain)
    if format == SAFETENSORS:
        read.write(out)
    else:
        _write_timm(read, out, registry)
    return Export(read, out, format)


def _write_timm(source: EncoderSource, out: Path, registry: Registry) -> None:
    encoder = source.encoder(registry)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        export_timm(encoder, out)
    except ValueError as error:  # not a 2D grid tokenizer on a ViT trunk
        raise ConfigError(
            f"{source.path}: --format {TIMM} writes 2D ViT encoders only (modality image2d,"
            f" encoder.trunk=vit), and this is a {source.metadata[MODALITY_KEY]} encoder: {error};"
            f" --format {SAFETENSORS} keeps any encoder"
        ) from error
