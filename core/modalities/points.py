"""points: (N, 3+F) point clouds: FPS + kNN patches, mini-PointNet tokens, Chamfer target, 3D views.

Follows Point-MAE (Pang et al., 2022): farthest point sampling picks group centres, the k nearest
neighbours of each centre form a local patch expressed relative to its centre, a mini-PointNet
embeds each patch and an MLP of the centre coordinates is its positional embedding. The
masked-modelling target is a patch's relative xyz, compared with Chamfer-L2 because a patch is an
unordered set. The first three channels are xyz; any further channels (colour, intensity, normals)
are per-point features that ride along with their point.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from fmcore.errors import ConfigError
from fmcore.modalities.base import (
    Modality,
    Tokenizer,
    TokenizerSettings,
    Tokens,
    ViewOp,
    ViewSpec,
    ViewStep,
)
from fmcore.modalities.views import random_noise, uniform

XYZ = 3
#: exact pairwise distances: the matrix-product form can put a point a hair away from itself
EXACT = "donot_use_mm_for_euclid_dist"


def gather_points(values: Tensor, index: Tensor) -> Tensor:
    """Rows of ``values`` (B, N, C) at ``index`` (B, *S) -> (B, *S, C)."""
    batch, _, channels = values.shape
    flat = index.reshape(batch, -1, 1).expand(-1, -1, channels)  # (B, prod(S), C)
    return torch.gather(values, 1, flat).reshape(*index.shape, channels)


def farthest_point_sampling(
    xyz: Tensor, num_samples: int, generator: torch.Generator | None = None
) -> Tensor:
    """Indices (B, num_samples) of iterative farthest point sampling of each cloud (B, N, 3).

    Without a generator every cloud starts from its point 0, as Point-MAE's CUDA kernel does, so the
    tokenizer is deterministic (views already shuffle point order); with one, each cloud starts
    from a random point. Picked points are excluded explicitly, so the indices are distinct even
    when a cloud holds duplicate points (views resampled with replacement do).
    """
    batch, num_points, _ = xyz.shape
    if not 0 < num_samples <= num_points:
        raise ValueError(f"cannot pick {num_samples} distinct points from {num_points}")
    device = xyz.device
    with torch.no_grad():
        xyz = xyz.float()
        rows = torch.arange(batch, device=device)
        if generator is None:
            current = torch.zeros(batch, dtype=torch.long, device=device)
        else:
            current = torch.randint(num_points, (batch,), generator=generator, device=device)
        picked = torch.empty(batch, num_samples, dtype=torch.long, device=device)
        # squared distance of every point to the picked set; -1 marks picked points
        nearest = torch.full((batch, num_points), math.inf, device=device)  # (B, N)
        for step in range(num_samples):
            picked[:, step] = current
            centre = xyz[rows, current].unsqueeze(1)  # (B, 1, 3)
            nearest = torch.minimum(nearest, (xyz - centre).square().sum(dim=-1))
            nearest[rows, current] = -1.0
            current = nearest.argmax(dim=1)
    return picked


def knn_groups(xyz: Tensor, centers: Tensor, k: int) -> Tensor:
    """Indices (B, G, k) of the k points of ``xyz`` (B, N, 3) nearest each centre (B, G, 3).

    Nearest first, so a centre taken from the cloud is the first member of its own group.
    """
    with torch.no_grad():
        dist = torch.cdist(centers.float(), xyz.float(), compute_mode=EXACT)  # (B, G, N)
        return dist.topk(k, dim=-1, largest=False, sorted=True).indices


def chamfer_distance(a: Tensor, b: Tensor) -> Tensor:
    """Chamfer-L2 (B,) between point sets a (B, M, 3) and b (B, K, 3), as in Point-MAE.

    Mean over a of the squared distance to the nearest point of b, plus the same from b to a.
    """
    squared = torch.cdist(a.float(), b.float(), compute_mode=EXACT).square()  # (B, M, K)
    return squared.min(dim=2).values.mean(dim=1) + squared.min(dim=1).values.mean(dim=1)


class MiniPointNet(nn.Module):
    """Point-MAE's patch encoder: shared point MLP, max-pool, global feature joined to every
    point, second shared MLP, max-pool.

    LayerNorm replaces Point-MAE's BatchNorm so the embedding keeps no batch statistics: it acts the
    same in training and evaluation, for batches of one, and under federated weight averaging.
    """

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.first = nn.Sequential(
            nn.Linear(in_channels, 128), nn.LayerNorm(128), nn.ReLU(), nn.Linear(128, 256)
        )
        self.second = nn.Sequential(
            nn.Linear(512, 512), nn.LayerNorm(512), nn.ReLU(), nn.Linear(512, out_channels)
        )

    def forward(self, groups: Tensor) -> Tensor:
        """(B, G, K, C) patches -> (B, G, out_channels) patch embeddings."""
        local = self.first(groups)  # (B, G, K, 256)
        pooled = local.amax(dim=2, keepdim=True).expand_as(local)  # (B, G, K, 256)
        joined = torch.cat([pooled, local], dim=-1)  # (B, G, K, 512)
        return self.second(joined).amax(dim=2)  # (B, G, D)


class PointTokenizer(Tokenizer):
    """Point-MAE / Point-BERT patch tokens: FPS centres, kNN neighbourhoods, mini-PointNet.

    Every view gives ``num_groups`` tokens of ``group_size`` points whatever its point count, so a
    view needs at least ``max(num_groups, group_size)`` points.
    """

    def __init__(
        self,
        embed_dim: int,
        channels: int,
        num_groups: int,
        group_size: int,
        sample_size: Sequence[int],
    ) -> None:
        super().__init__()
        if channels < XYZ:
            raise ConfigError(f"points need xyz first: got {channels} channels, expected 3+F")
        if len(sample_size) != 1:
            raise ConfigError(f"points sample size is (num_points,), got {tuple(sample_size)}")
        self.embed_dim = embed_dim
        self.channels = channels
        self.num_groups = num_groups
        self.group_size = group_size
        self._check_point_count(int(sample_size[0]))
        self.encoder = MiniPointNet(channels, embed_dim)
        self.pos_embed = nn.Sequential(nn.Linear(XYZ, 128), nn.GELU(), nn.Linear(128, embed_dim))

    @property
    def target_dim(self) -> int:
        return self.group_size * XYZ

    @property
    def size_multiple(self) -> tuple[int, ...]:
        return (1,)

    def _check_point_count(self, num_points: int) -> None:
        if num_points < max(self.num_groups, self.group_size):
            raise ValueError(
                f"{num_points} points cannot make {self.num_groups} groups of {self.group_size}:"
                " lower encoder.tokenizer.num_groups / group_size or raise data.size"
            )

    def group(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Centres (B, G, 3), relative xyz (B, G, K, 3) and patch inputs (B, G, K, 3+F) of x."""
        if x.dim() != 3 or x.shape[-1] != self.channels:
            raise ValueError(f"expected points (B, N, {self.channels}), got {tuple(x.shape)}")
        self._check_point_count(x.shape[1])
        xyz = x[..., :XYZ]
        centers = gather_points(xyz, farthest_point_sampling(xyz, self.num_groups))  # (B, G, 3)
        members = gather_points(x, knn_groups(xyz, centers, self.group_size))  # (B, G, K, 3+F)
        relative = members[..., :XYZ] - centers.unsqueeze(2)  # (B, G, K, 3)
        return centers, relative, torch.cat([relative, members[..., XYZ:]], dim=-1)

    def forward(self, x: Tensor) -> Tokens:
        centers, relative, patches = self.group(x)
        return Tokens(
            x=self.encoder(patches),
            pos=self.pos_embed(centers),
            grid=None,
            groups=relative,
            centers=centers,
        )

    def reconstruction_target(self, x: Tensor, tokens: Tokens, normalize: bool = True) -> Tensor:
        """Each patch's xyz relative to its centre, flattened: (B, G, K * 3), with or without
        ``normalize`` (relative coordinates carry no intensity to remove)."""
        if tokens.groups is None:
            raise ValueError("point tokens carry no groups; make them with PointTokenizer")
        return tokens.groups.flatten(2)


def crop_indices(
    xyz: Tensor, scale: tuple[float, float], num_out: int, generator: torch.Generator
) -> Tensor:
    """Indices (B, num_out) of a random local crop of each cloud (B, N, 3), resampled.

    A random point of each cloud centres the crop, which keeps the round(s * N) points nearest to
    it, s uniform in ``scale`` per cloud. The kept points are taken in a random order, so without
    replacement while ``num_out`` <= kept; when more are needed the random order is cycled, so each
    kept point appears equally often (within one).
    """
    batch, num_points, _ = xyz.shape
    device = xyz.device
    centre = torch.randint(num_points, (batch,), generator=generator, device=device)
    fraction = uniform(scale[0], scale[1], (batch,), generator, device)
    kept = (fraction * num_points).round().long().clamp(1, num_points)  # (B,)
    with torch.no_grad():
        offsets = xyz - gather_points(xyz, centre.unsqueeze(1))  # (B, N, 3)
        by_distance = offsets.square().sum(dim=-1).argsort(dim=1)  # (B, N) nearest first
        ranks = torch.arange(num_points, device=device)
        # noise < 1 for kept ranks and >= 1 for the others: sorting puts a random order of the
        # kept ranks first
        noise = torch.rand(batch, num_points, generator=generator, device=device)
        shuffled = (noise + (ranks >= kept.unsqueeze(1))).argsort(dim=1)  # (B, N)
        slots = torch.arange(num_out, device=device) % kept.unsqueeze(1)  # (B, num_out)
        return torch.gather(by_distance, 1, torch.gather(shuffled, 1, slots))


def random_crop(
    points: Tensor, scale: tuple[float, float], num_out: int, generator: torch.Generator
) -> Tensor:
    """A random local crop of each cloud (B, N, 3+F), resampled to ``num_out`` points."""
    return gather_points(points, crop_indices(points[..., :XYZ], scale, num_out, generator))


@dataclass(frozen=True)
class OnXyz:
    """View steps applied in turn to the xyz columns of (B, N, 3+F) points; the feature channels
    pass unchanged."""

    steps: tuple[ViewStep, ...]

    def __call__(self, points: Tensor, generator: torch.Generator) -> Tensor:
        xyz = points[..., :XYZ]
        for step in self.steps:
            xyz = step(xyz, generator)
        return torch.cat([xyz, points[..., XYZ:]], dim=-1)


def normalize_unit_sphere(xyz: Tensor, eps: float = 1e-8) -> Tensor:
    """Centre each cloud (B, N, 3) on its centroid and scale it into the unit sphere (Point-MAE)."""
    centred = xyz - xyz.mean(dim=1, keepdim=True)
    radius = centred.norm(dim=-1).amax(dim=1).clamp(min=eps)  # (B,)
    return centred / radius.view(-1, 1, 1)


def random_flip(xyz: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """Mirror x and y, each independently with probability ``p``; z (up) is never mirrored."""
    if p <= 0:
        return xyz
    batch = xyz.shape[0]
    flips = torch.rand(batch, 2, generator=generator, device=xyz.device) < p  # (B, 2)
    signs = torch.ones(batch, XYZ, dtype=xyz.dtype, device=xyz.device)
    signs[:, :2] = torch.where(flips, -1.0, 1.0).to(xyz.dtype)
    return xyz * signs.unsqueeze(1)


def random_scale_rotate(
    xyz: Tensor, p: float, strength: float, generator: torch.Generator
) -> Tensor:
    """With probability ``p`` per cloud: scale each axis by a factor uniform in
    [1 - strength, 1 + strength], then rotate by a uniform angle about the z (up) axis."""
    if p <= 0:
        return xyz
    batch, device = xyz.shape[0], xyz.device
    apply = torch.rand(batch, generator=generator, device=device) < p
    factors = uniform(1 - strength, 1 + strength, (batch, XYZ), generator, device)
    angle = uniform(0.0, 2 * math.pi, (batch,), generator, device)
    cos, sin = angle.cos(), angle.sin()
    rotation = torch.zeros(batch, XYZ, XYZ, device=device)  # (B, 3, 3) about z
    rotation[:, 0, 0], rotation[:, 0, 1] = cos, -sin
    rotation[:, 1, 0], rotation[:, 1, 1] = sin, cos
    rotation[:, 2, 2] = 1.0
    # row vectors: p' = R S p becomes p'^T = p^T S R^T
    transform = torch.diag_embed(factors) @ rotation.transpose(1, 2)  # (B, 3, 3)
    identity = torch.eye(XYZ, device=device).expand(batch, -1, -1)
    transform = torch.where(apply.view(-1, 1, 1), transform, identity)
    return xyz @ transform.to(xyz.dtype)


class Points(Modality):
    name = "points"
    layout = "(N, 3+F)"

    def build_tokenizer(self, settings: TokenizerSettings) -> PointTokenizer:
        return PointTokenizer(
            settings.embed_dim,
            settings.channels,
            num_groups=int(settings.options.get("num_groups", 64)),
            group_size=int(settings.options.get("group_size", 32)),
            sample_size=settings.sample_size,
        )

    def reconstruction_loss(self, pred: Tensor, target: Tensor, mask: Tensor) -> Tensor:
        """Mean Chamfer-L2 between predicted and target patches (B, G, K * 3) over masked groups.

        Every group's distance is computed (no data-dependent indexing, so no device sync) and the
        unmasked ones are zeroed out.
        """
        batch, groups, size = pred.shape
        per_group = chamfer_distance(
            pred.reshape(batch * groups, size // XYZ, XYZ),
            target.reshape(batch * groups, size // XYZ, XYZ),
        ).reshape(batch, groups)
        per_group = torch.where(mask, per_group, 0.0)
        return per_group.sum() / mask.sum().clamp(min=1)

    def view_steps(self, spec: ViewSpec, out_size: Sequence[int]) -> list[ViewStep]:
        """Local crop resampled to ``out_size[0]`` points, x/y flips, scaling and rotation about z,
        xyz noise, then unit-sphere normalisation. Blur, grayscale and solarize do not apply.

        Noise is added to the normalised crop, so its std is in units of the view's radius. Extra
        feature channels are carried unchanged (normals would not follow the rotation; a domain
        can add a ViewStep for them).
        """
        (num_out,) = out_size
        return [
            ViewOp(random_crop, {"scale": spec.scale, "num_out": num_out}),
            OnXyz(
                (
                    ViewOp(normalize_unit_sphere, random=False),
                    ViewOp(random_flip, {"p": spec.flip}),
                    ViewOp(
                        random_scale_rotate,
                        {"p": spec.jitter, "strength": spec.jitter_strength * 0.5},
                    ),
                    ViewOp(random_noise, {"std": spec.noise}),
                    ViewOp(normalize_unit_sphere, random=False),
                )
            ),
        ]
