"""DINOv2 wired to fmcore's contract: multi-crop views -> student and EMA teacher -> three losses.

Per step: two global and N local crops from the modality's batched views; the teacher sees the
global crops, the student sees all crops with block masks on its global crops. Losses: DINO
cross-entropy between student crops and the teacher's centred class-token distributions of the
other global crop(s); iBOT cross-entropy on masked patch tokens; KoLeo on the student's global
class tokens. The teacher follows the student by EMA after every optimizer step.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from torch import Tensor, nn

from fmcore.collapse import FEATURE_STD, PREFIX, feature_spread
from fmcore.encoder import Encoder, feature_kind, pool
from fmcore.errors import ConfigError
from fmcore.method import Batch, Method, Scope, StepContext, StepOutput, as_teacher, ema_update
from fmcore.modalities.base import Modality, Tokens
from fmcore.modalities.masking import host_rng
from fmcore.plugins.dinov2.centering import SoftmaxCentering, sinkhorn_knopp
from fmcore.plugins.dinov2.head import DINOHead
from fmcore.plugins.dinov2.losses import dino_cross_entropy, ibot_patch_loss, koleo_loss
from fmcore.plugins.dinov2.param_groups import layerwise_groups

TEACHER_ENTROPY = PREFIX + "teacher_entropy"
TEACHER_KL_UNIFORM = PREFIX + "teacher_kl_uniform"
UNIFORM_SHARE = 0.95  # of ln K: an entropy (or KL) this close to its bound is a collapse


@torch.no_grad()
def teacher_spread(targets: Tensor) -> dict[str, float]:
    """Collapse signals of teacher target distributions (N, K): the mean entropy of one sample's
    distribution (ln K: uniform, nothing to learn) and the KL divergence of their mean from
    uniform (ln K: one prototype takes every sample)."""
    probabilities = targets.float().clamp(min=1e-12)
    entropy = -(probabilities * probabilities.log()).sum(dim=1).mean()
    mean = probabilities.mean(dim=0)
    kl_uniform = (mean * (mean * mean.numel()).log()).sum()
    return {TEACHER_ENTROPY: float(entropy), TEACHER_KL_UNIFORM: float(kl_uniform)}


def _head(config: DictConfig, dim: int) -> DINOHead:
    return DINOHead(
        dim, config.prototypes, config.hidden_dim, config.bottleneck_dim, config.nlayers
    )


class DINOv2(Method):
    name = "dinov2"

    def __init__(self, config: DictConfig, encoder: Encoder, modality: Modality) -> None:
        super().__init__(config, encoder, modality)
        if config.centering not in ("sinkhorn_knopp", "softmax"):
            raise ConfigError(
                f"method.centering must be sinkhorn_knopp or softmax, not '{config.centering}'"
            )
        # The image-level token DINO distils (and KoLeo spreads): DINOv2's class token, or the
        # mean patch token, which hands every token the DINO gradient on small grids.
        self.distilled = feature_kind(config.get("features"), "method.features")
        if self.distilled == "cls+mean":
            raise ConfigError(
                "method.features must be cls or mean for DINOv2 (the DINO head's input)"
            )
        dim = encoder.embed_dim
        self.dino_head = _head(config.dino, dim)
        # iBOT shares the DINO head unless ibot.separate_head is set (DINOv2's default: shared)
        self.ibot_head = _head(config.ibot, dim) if config.ibot.separate_head else None
        teacher = {
            "encoder": as_teacher(copy.deepcopy(encoder)),
            "dino_head": copy.deepcopy(self.dino_head),
        }
        if self.ibot_head is not None:
            teacher["ibot_head"] = copy.deepcopy(self.ibot_head)
        self.teacher = nn.ModuleDict(teacher)
        self.teacher.requires_grad_(False)
        if config.centering == "softmax":
            self.dino_centering = SoftmaxCentering(config.dino.prototypes, config.center_momentum)
            ibot_prototypes = (config.ibot if config.ibot.separate_head else config.dino).prototypes
            self.ibot_centering = SoftmaxCentering(ibot_prototypes, config.center_momentum)
        self.ibot_enabled = float(config.ibot.mask_sample_probability) > 0
        self.global_specs = (self.view_specs["global_1"], self.view_specs["global_2"])
        self.local_spec = self.view_specs.get("local")

    # --- schedules and centring ------------------------------------------------------------

    def teacher_temperature(self, progress: float) -> float:
        """Linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp``, then constant."""
        warmup = float(self.config.teacher_temp_warmup)
        start, end = float(self.config.warmup_teacher_temp), float(self.config.teacher_temp)
        if warmup <= 0 or progress >= warmup:
            return end
        return start + (end - start) * progress / warmup

    def _targets(self, logits: Tensor, temperature: float, centering: str) -> Tensor:
        if self.config.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, temperature, int(self.config.sinkhorn_iterations))
        return getattr(self, centering)(logits, temperature)

    # --- masks -----------------------------------------------------------------------------

    def _masks(self, count: int, tokens: Tokens, generator: torch.Generator) -> Tensor:
        """iBOT masks for ``count`` global crops: a ``mask_sample_probability`` share of them get
        masks whose ratios are spread over ``mask_ratio``, the others none; order shuffled."""
        ibot = self.config.ibot
        rng = host_rng(generator)
        num_tokens = tokens.num_tokens
        # At least one crop is masked whenever iBOT is on, so every rank always runs its loss.
        masked_samples = (
            max(1, int(count * float(ibot.mask_sample_probability))) if self.ibot_enabled else 0
        )
        bounds = np.linspace(*ibot.mask_ratio, masked_samples + 1)
        masks = np.zeros((count, num_tokens), dtype=bool)
        for i in range(masked_samples):
            target = max(1, int(num_tokens * rng.uniform(bounds[i], bounds[i + 1])))
            # DINOv2's generator caps one block at half the tokens
            masks[i] = self.modality.block_token_mask(
                tokens, target, rng, max_block=num_tokens // 2
            )
        masks = masks[rng.permutation(count)]
        return torch.from_numpy(masks).to(tokens.x.device)

    # --- the step --------------------------------------------------------------------------

    def forward(self, batch: Batch, ctx: StepContext) -> StepOutput:
        config = self.config
        batch_size = batch.data.shape[0]
        global_crops = torch.cat(
            [ctx.views(batch.data, spec, ctx.generator)[0] for spec in self.global_specs]
        )  # (2B, ...)
        local_crops = (
            ctx.views(batch.data, self.local_spec, ctx.generator)
            if self.local_spec is not None and self.local_spec.count > 0
            else []
        )
        temperature = self.teacher_temperature(ctx.progress)

        with torch.no_grad():
            teacher_out = self.teacher["encoder"](global_crops)
            teacher_logits = self.teacher["dino_head"](pool(teacher_out, self.distilled))  # (2B, K)
            teacher_targets = self._targets(teacher_logits, temperature, "dino_centering")
            teacher_targets = teacher_targets.view(2, batch_size, -1)

        tokens = self.encoder.tokenizer(global_crops)
        mask = self._masks(2 * batch_size, tokens, ctx.generator)  # (2B, N)
        student_global = self.encoder.encode_tokens(tokens, mask=mask)
        student_tokens = pool(student_global, self.distilled)  # (2B, D)
        student_logits = [self.dino_head(student_tokens).view(2, batch_size, -1)]
        if local_crops:
            student_local = pool(self.encoder(torch.cat(local_crops)), self.distilled)
            student_logits.append(
                self.dino_head(student_local).view(len(local_crops), batch_size, -1)
            )
        dino = dino_cross_entropy(torch.cat(student_logits), teacher_targets, config.student_temp)

        ibot = self._ibot_loss(student_global.patches, teacher_out.patches, mask, temperature)
        koleo = sum(koleo_loss(tokens) for tokens in student_tokens.chunk(2))
        loss = (
            float(config.dino.loss_weight) * dino
            + float(config.ibot.loss_weight) * ibot
            + float(config.dino.koleo_loss_weight) * koleo
        )
        return StepOutput(
            loss=loss,
            metrics={
                "dino_loss": float(dino.detach()),
                "ibot_loss": float(ibot.detach()),
                "koleo_loss": float(koleo.detach()),
                "teacher_temp": temperature,
                "masked_fraction": float(mask.float().mean()),
                FEATURE_STD: feature_spread(student_tokens),
                **teacher_spread(teacher_targets.flatten(0, 1)),
            },
        )

    def collapse_warnings(self, metrics: Mapping[str, float], progress: float) -> dict[str, str]:
        warnings = super().collapse_warnings(metrics, progress)
        uniform = math.log(int(self.config.dino.prototypes))
        if progress > float(self.config.teacher_temp_warmup):
            if metrics[TEACHER_ENTROPY] > UNIFORM_SHARE * uniform:
                warnings[TEACHER_ENTROPY] = (
                    f"the teacher's targets are near uniform (entropy"
                    f" {metrics[TEACHER_ENTROPY]:.2f} of ln K = {uniform:.2f}): DINO learns"
                    " nothing from them, the small-batch failure of the reference recipe; a"
                    " colder teacher helps (method.warmup_teacher_temp=0.01"
                    " method.teacher_temp=0.02, as method=dinov2_small has)"
                )
            if metrics[TEACHER_KL_UNIFORM] > UNIFORM_SHARE * uniform:
                warnings[TEACHER_KL_UNIFORM] = (
                    f"a few prototypes take every sample (KL of the mean teacher distribution"
                    f" to uniform {metrics[TEACHER_KL_UNIFORM]:.2f} of at most {uniform:.2f}):"
                    " the teacher is collapsing; centring keeps it off this"
                )
        return warnings

    def _ibot_loss(
        self, student_patches: Tensor, teacher_patches: Tensor, mask: Tensor, temperature: float
    ) -> Tensor:
        if not self.ibot_enabled:  # decided by config, so every DDP rank takes the same path
            return student_patches.sum() * 0.0
        student_head = self.ibot_head or self.dino_head
        teacher_head = (
            self.teacher["ibot_head"] if self.ibot_head is not None else self.teacher["dino_head"]
        )
        with torch.no_grad():
            teacher_logits = teacher_head(teacher_patches[mask])  # (M, K)
            targets = self._targets(teacher_logits, temperature, "ibot_centering")
        student_logits = student_head(student_patches[mask])  # (M, K)
        return ibot_patch_loss(student_logits, targets, mask, self.config.student_temp)

    # --- around the optimizer step ----------------------------------------------------------

    def clip_groups(self) -> list[list[nn.Parameter]]:
        """The encoder and each head are clipped on their own, as in DINOv2."""
        modules = [self.encoder, self.dino_head, self.ibot_head]
        return [[p for p in m.parameters() if p.requires_grad] for m in modules if m is not None]

    def before_optimizer_step(self, ctx: StepContext) -> None:
        """Freeze the prototypes early in training (DINO's last-layer freeze) for stability."""
        if ctx.progress < float(self.config.freeze_last_layer):
            for head in (self.dino_head, self.ibot_head):
                if head is not None:
                    head.prototypes.grad = None

    def after_optimizer_step(self, ctx: StepContext) -> None:
        """Teacher <- momentum * teacher + (1 - momentum) * student."""
        pairs = [
            (self.teacher["encoder"], self.encoder),
            (self.teacher["dino_head"], self.dino_head),
        ]
        if self.ibot_head is not None:
            pairs.append((self.teacher["ibot_head"], self.ibot_head))
        ema_update(pairs, ctx.ema_momentum)

    def export_encoder(self) -> Encoder:
        return self.teacher["encoder"]  # DINOv2 evaluates and releases the teacher

    def parameter_groups(self) -> list[dict[str, Any]]:
        return layerwise_groups(
            self,
            self.encoder.trunk,
            layer_decay=float(self.config.layer_decay),
            patch_embed_lr=float(self.config.patch_embed_lr),
        )

    def scopes(self) -> dict[str, Scope]:
        """Trunks shared, tokenizers and heads per domain, running centres local to the site."""
        scopes = super().scopes()
        return {k: Scope.LOCAL if "centering." in k else v for k, v in scopes.items()}
