"""Conditional 3D U-Net that predicts the flow velocity of 8-channel Haar wavelet volumes.

The layout follows improved-diffusion's UNetModel (ResBlocks with scale-shift FiLM, up/down ResBlocks,
zero-initialised output convolutions) and keeps the FlowLet reference's state-dict names, so released
reference checkpoints load with ``strict=True`` (tests/test_generative_model.py loads the reference fixtures).

Our extensions, all off (or neutral) by default so that the default configuration builds exactly the
reference network:

- ``num_context_tokens > 1``: the condition vector is projected to K context tokens, so cross-attention
  is spatially adaptive (with the reference's single token, softmax over one key is 1 and cross-attention
  collapses to a voxel-independent bias).
- ``use_film`` / ``use_cross_attn`` switch the two conditioning paths independently (the reference's
  ``unet_disable_cross_attn`` also silently disabled FiLM).
- ``condition_dropout > 0``: a learned null embedding per condition replaces a sample's conditions with
  that probability during training, which enables classifier-free guidance at sampling time.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from flowlet.errors import FlowletError

log = logging.getLogger(__name__)

PRESETS_DIR = Path(__file__).with_name("presets")
# A preset may carry the training settings it was tuned with under this key (not part of the network config).
PRESET_TRAINING_KEY = "training"
NORM_EPS = 1e-6

# Reference config.json keys of the network, mapped to UNetConfig fields.
_REFERENCE_KEYS = {
    "unet_model_channels": "model_channels",
    "unet_num_res_blocks": "num_res_blocks",
    "unet_channel_mult": "channel_mult",
    "unet_attention_res": "attention_resolutions",
    "unet_num_heads": "num_heads",
    "unet_num_head_channels": "num_head_channels",
    "unet_norm_num_groups": "norm_num_groups",
    "unet_dropout": "dropout",
    "condition_vars": "condition_vars",
    "condition_embedding_dim": "condition_embedding_dim",
    "model_input_size": "model_input_size",
    "save_size": "save_size",
    "use_checkpointing": "use_checkpointing",
    "use_xformers": "use_xformers",
    # Our extensions; the reference ignores keys it does not know.
    "unet_in_channels": "in_channels",
    "unet_out_channels": "out_channels",
    "unet_num_context_tokens": "num_context_tokens",
    "unet_use_film": "use_film",
    "unet_use_cross_attn": "use_cross_attn",
    "condition_dropout": "condition_dropout",
}


def _int_tuple(value: Any, key: str) -> tuple[int, ...]:
    """Reference configs store lists as comma strings ("1,2,3,4"); accept those, lists and single ints."""
    try:
        if isinstance(value, str):
            return tuple(int(part) for part in value.split(",") if part.strip())
        if isinstance(value, (int, float)):
            return (int(value),)
        return tuple(int(part) for part in value)
    except (TypeError, ValueError):
        raise FlowletError(
            f"config key '{key}' must be a list of integers or a comma string like '1,2,3,4', got {value!r}"
        ) from None


@dataclasses.dataclass
class UNetConfig:
    """Network hyper-parameters; serialised into checkpoints in the reference config.json format."""

    model_channels: int = 128
    num_res_blocks: int = 2
    channel_mult: tuple[int, ...] = (1, 2, 3, 4)
    attention_resolutions: tuple[int, ...] = (16, 8)
    num_heads: int = 8
    num_head_channels: int = -1
    norm_num_groups: int = 32
    dropout: float = 0.0
    condition_vars: tuple[str, ...] = ("Age",)
    condition_embedding_dim: int = 512
    in_channels: int = 8
    out_channels: int = 8
    use_checkpointing: bool = False
    use_xformers: bool = False
    model_input_size: tuple[int, int, int] = (112, 112, 112)
    save_size: tuple[int, int, int] = (91, 109, 91)
    num_context_tokens: int = 1
    use_film: bool = True
    use_cross_attn: bool = True
    condition_dropout: float = 0.0
    # Training and sampling keys of the config.json (lr, flow_type, num_flow_steps, ...), kept verbatim.
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        self.channel_mult = _int_tuple(self.channel_mult, "unet_channel_mult")
        self.attention_resolutions = _int_tuple(self.attention_resolutions, "unet_attention_res")
        self.model_input_size = _int_tuple(self.model_input_size, "model_input_size")
        self.save_size = _int_tuple(self.save_size, "save_size")
        if isinstance(self.condition_vars, str):
            self.condition_vars = (self.condition_vars,)
        self.condition_vars = tuple(str(name) for name in self.condition_vars)
        self.validate()

    @property
    def disable_cross_attn(self) -> bool:
        """The reference's name for ``not use_cross_attn``."""
        return not self.use_cross_attn

    @property
    def level_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * mult for mult in self.channel_mult)

    @property
    def wavelet_grid(self) -> tuple[int, int, int]:
        """Spatial size the U-Net sees: the padded input size halved by the Haar transform."""
        return tuple(size // 2 for size in self.model_input_size)

    def heads_for(self, channels: int) -> int:
        if self.num_head_channels == -1:
            return self.num_heads
        return channels // self.num_head_channels

    def validate(self) -> None:
        problems = []
        if self.model_channels <= 0 or self.num_res_blocks <= 0 or not self.channel_mult:
            problems.append("unet_model_channels, unet_num_res_blocks and unet_channel_mult must be positive/non-empty")
        for channels in self.level_channels:
            if channels % self.norm_num_groups:
                problems.append(f"{channels} channels are not divisible by unet_norm_num_groups={self.norm_num_groups}")
            heads = self.heads_for(channels)
            if heads <= 0 or channels % heads:
                problems.append(f"{channels} channels cannot be split into {heads} attention heads")
        if self.model_channels % 2:
            problems.append("unet_model_channels must be even (sinusoidal time embedding)")
        if self.num_context_tokens < 1:
            problems.append("unet_num_context_tokens must be at least 1")
        if not 0.0 <= self.condition_dropout < 1.0:
            problems.append("condition_dropout must be in [0, 1)")
        if self.condition_vars and not (self.use_film or self.use_cross_attn):
            problems.append("conditions are given but both unet_use_film and unet_use_cross_attn are off")
        if len(set(self.condition_vars)) != len(self.condition_vars):
            problems.append(f"condition_vars has duplicates: {list(self.condition_vars)}")
        factor = 2 ** len(self.channel_mult)  # Haar halves once, then one pooling per level but the last
        for size in self.model_input_size:
            if size % factor:
                problems.append(f"model_input_size {list(self.model_input_size)} must be divisible by {factor}")
                break
        if any(s > m for s, m in zip(self.save_size, self.model_input_size)):
            problems.append(f"save_size {list(self.save_size)} exceeds model_input_size {list(self.model_input_size)}")
        if problems:
            raise FlowletError("invalid U-Net configuration: " + "; ".join(problems))

    @classmethod
    def from_reference_dict(cls, config: Mapping[str, Any]) -> UNetConfig:
        """Read a reference-style config.json dict; keys we do not model are kept in ``extra``."""
        kwargs: dict[str, Any] = {}
        extra: dict[str, Any] = {}
        for key, value in config.items():
            if key in _REFERENCE_KEYS:
                kwargs[_REFERENCE_KEYS[key]] = value
            elif key == "unet_disable_cross_attn":
                kwargs.setdefault("use_cross_attn", not bool(value))
            else:
                extra[key] = value
        if "unet_use_cross_attn" in config and "unet_disable_cross_attn" in config:
            if bool(config["unet_use_cross_attn"]) == bool(config["unet_disable_cross_attn"]):
                raise FlowletError("config keys unet_use_cross_attn and unet_disable_cross_attn contradict each other")
        try:
            return cls(**kwargs, extra=extra)
        except (TypeError, ValueError) as error:
            raise FlowletError(f"invalid U-Net configuration: {error}") from None

    def to_reference_dict(self) -> dict[str, Any]:
        """The reference config.json format (comma strings for multipliers), plus our extension keys."""
        out = dict(self.extra)
        for key, field in _REFERENCE_KEYS.items():
            value = getattr(self, field)
            if field in ("channel_mult", "attention_resolutions"):
                value = ",".join(str(v) for v in value)
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        out["unet_disable_cross_attn"] = self.disable_cross_attn
        return out


def load_config(path: str | Path) -> UNetConfig:
    """Read a reference-format config.json (e.g. one of the presets) into a :class:`UNetConfig`."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise FlowletError(f"config file {path} does not exist") from None
    except (OSError, json.JSONDecodeError) as error:
        raise FlowletError(f"config file {path} is not readable JSON: {error}") from None
    if not isinstance(data, dict):
        raise FlowletError(f"config file {path} must hold a JSON object, got {type(data).__name__}")
    try:
        return UNetConfig.from_reference_dict(data)
    except FlowletError as error:
        raise FlowletError(f"{path}: {error}") from None


def _preset_path(name: str) -> Path:
    path = PRESETS_DIR / f"{name}.json"
    if not path.exists():
        available = sorted(p.stem for p in PRESETS_DIR.glob("*.json"))
        raise FlowletError(f"unknown preset '{name}'; available: {available}")
    return path


def preset_config(name: str) -> UNetConfig:
    """The shipped architectures: 'base' (356 M) and 'large' (1.0 B), the published FlowLet ones; 'tiny' (the
    fixture network); 'smoke' (a smaller one that trains in a minute on 2 cores, for tests and quick checks); 'cpu'
    (a lean three-level network for 8 mm studies on a CPU)."""
    config = load_config(_preset_path(name))
    config.extra.pop(PRESET_TRAINING_KEY, None)
    return config


def preset_training(name: str) -> dict[str, Any]:
    """A preset's training settings (TrainingOptions fields), empty for the reference presets."""
    return dict(json.loads(_preset_path(name).read_text()).get(PRESET_TRAINING_KEY, {}))


def zero_module(module: nn.Module) -> nn.Module:
    """Zero a module's parameters so a residual branch starts as the identity."""
    for parameter in module.parameters():
        parameter.detach().zero_()
    return module


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of the raw t in [0, 1] (not scaled by 1000), halves ordered [cos | sin]."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def normalization(channels: int, groups: int) -> nn.GroupNorm:
    return nn.GroupNorm(groups, channels, eps=NORM_EPS)


_xformers_warning_given = False


def _xformers_ops():
    """xformers' attention module when installed; warn once when it was requested but is missing."""
    global _xformers_warning_given
    if importlib.util.find_spec("xformers") is not None:
        import xformers.ops

        return xformers.ops
    if not _xformers_warning_given:
        log.warning("use_xformers is set but xformers is not installed; using PyTorch scaled-dot-product attention")
        _xformers_warning_given = True
    return None


class ConditionedBlock(nn.Module):
    """A block that also takes the time embedding, condition embedding and context tokens."""

    use_checkpointing = False

    def forward(self, x, time_emb, cond_emb, context):
        if self.use_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(self._forward, x, time_emb, cond_emb, context, use_reentrant=False)
        return self._forward(x, time_emb, cond_emb, context)

    def _forward(self, x, time_emb, cond_emb, context):
        raise NotImplementedError


class ConditionedSequential(nn.Sequential):
    def forward(self, x, time_emb, cond_emb, context):
        for layer in self:
            x = layer(x, time_emb, cond_emb, context) if isinstance(layer, ConditionedBlock) else layer(x)
        return x


class ResBlock(ConditionedBlock):
    """GN-SiLU-conv, time FiLM then condition FiLM, SiLU-dropout-zero conv, plus a (3^3 conv) skip.

    ``resample`` 'down' average-pools and 'up' nearest-upsamples both paths by 2.
    """

    def __init__(
        self,
        channels: int,
        time_dim: int,
        cond_dim: int | None,
        out_channels: int,
        groups: int,
        dropout: float,
        resample: str | None = None,
        use_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.resample = resample
        self.use_checkpointing = use_checkpointing
        self.in_layers = nn.Sequential(
            normalization(channels, groups), nn.SiLU(), nn.Conv3d(channels, out_channels, 3, padding=1)
        )
        self.emb_layers = nn.Sequential(nn.SiLU(), nn.Linear(time_dim, 2 * out_channels))
        self.cond_emb_layers = (
            nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * out_channels)) if cond_dim is not None else None
        )
        self.out_layers = nn.Sequential(
            normalization(out_channels, groups),
            nn.SiLU(),
            nn.Dropout(dropout),
            zero_module(nn.Conv3d(out_channels, out_channels, 3, padding=1)),
        )
        self.skip_connection = (
            nn.Identity() if channels == out_channels else nn.Conv3d(channels, out_channels, 3, padding=1)
        )

    def _resample(self, x: torch.Tensor) -> torch.Tensor:
        if self.resample == "down":
            return F.avg_pool3d(x, kernel_size=2, stride=2)
        if self.resample == "up":
            return F.interpolate(x, scale_factor=2, mode="nearest")
        return x

    @staticmethod
    def _film(h: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        scale, shift = emb[(...,) + (None,) * (h.dim() - 2)].chunk(2, dim=1)
        return h * (1 + scale) + shift

    def _forward(self, x, time_emb, cond_emb, context):
        h = self.in_layers[:-1](x)
        h = self.in_layers[-1](self._resample(h))
        x = self._resample(x)
        h = self._film(self.out_layers[0](h), self.emb_layers(time_emb).to(h.dtype))
        if self.cond_emb_layers is not None:
            h = self._film(h, self.cond_emb_layers(cond_emb).to(h.dtype))
        h = self.out_layers[1:](h)
        return self.skip_connection(x) + h


class AttentionBlock(ConditionedBlock):
    """Self-attention over all voxels, then cross-attention to the condition context tokens, as a residual."""

    def __init__(
        self,
        channels: int,
        heads: int,
        cond_dim: int | None,
        groups: int,
        use_xformers: bool = False,
        use_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        self.heads = heads
        self.use_checkpointing = use_checkpointing
        self.xformers = _xformers_ops() if use_xformers else None
        self.norm = normalization(channels, groups)
        self.proj_in = nn.Conv3d(channels, channels, 1)
        self.norm_seq = nn.LayerNorm(channels, eps=NORM_EPS)
        self.to_q = nn.Linear(channels, channels, bias=False)
        self.to_k = nn.Linear(channels, channels, bias=False)
        self.to_v = nn.Linear(channels, channels, bias=False)
        self.proj_self_attn_out = nn.Linear(channels, channels)
        self.cross = cond_dim is not None
        if self.cross:
            self.norm_context = nn.LayerNorm(cond_dim, eps=NORM_EPS)
            self.to_q_cross = nn.Linear(channels, channels, bias=False)
            self.to_kv_cross = nn.Linear(cond_dim, 2 * channels, bias=False)
            self.proj_cross_attn_out = nn.Linear(channels, channels)
        self.proj_out = zero_module(nn.Conv3d(channels, channels, 1))

    def _attend(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(N, L, C) queries against (N, S, C) keys/values, split into heads."""
        n, length, channels = q.shape
        head_dim = channels // self.heads
        if self.xformers is not None and q.is_cuda:
            split = [t.reshape(n, t.shape[1], self.heads, head_dim) for t in (q, k, v)]
            out = self.xformers.memory_efficient_attention(*split)
        else:
            split = [t.reshape(n, t.shape[1], self.heads, head_dim).transpose(1, 2) for t in (q, k, v)]
            out = F.scaled_dot_product_attention(*split).transpose(1, 2)
        return out.reshape(n, length, channels)

    def _forward(self, x, time_emb, cond_emb, context):
        n, c, *spatial = x.shape
        h = self.proj_in(self.norm(x))
        h = h.reshape(n, c, -1).transpose(1, 2)
        # The reference keeps the LayerNormed sequence as the residual stream (checked against its outputs).
        h = self.norm_seq(h)
        h = h + self.proj_self_attn_out(self._attend(self.to_q(h), self.to_k(h), self.to_v(h)))
        if self.cross:
            k, v = self.to_kv_cross(self.norm_context(context).to(h.dtype)).chunk(2, dim=-1)
            h = h + self.proj_cross_attn_out(self._attend(self.to_q_cross(h), k, v))
        h = h.transpose(1, 2).reshape(n, c, *spatial)
        return x + self.proj_out(h)


class ConditionEmbedder(nn.Module):
    """One Linear-SiLU-Linear per scalar condition (normalised to [0, 1]), summed into one vector.

    With ``dropout > 0`` each condition also has a learned null embedding that replaces it for the
    samples being dropped (all conditions of a sample are dropped together).
    """

    def __init__(self, names: Sequence[str], dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.names = tuple(names)
        self.dim = dim
        self.dropout = dropout
        self.embedders = nn.ModuleDict(
            {name: nn.Sequential(nn.Linear(1, dim), nn.SiLU(), nn.Linear(dim, dim)) for name in self.names}
        )
        self.null_embeddings = (
            nn.ParameterDict({name: nn.Parameter(torch.zeros(dim)) for name in self.names}) if dropout > 0 else None
        )

    def forward(
        self, conditions: Mapping[str, torch.Tensor] | None, batch: int, drop: torch.Tensor | None
    ) -> torch.Tensor:
        if conditions is None or (drop is not None and bool(drop.all())):
            return self.null_embedding(batch)
        nulls = self._nulls() if drop is not None and bool(drop.any()) else None
        missing = [name for name in self.names if name not in conditions]
        if missing:
            raise FlowletError(f"model expects conditions {list(self.names)}; missing {missing}")
        unknown = sorted(set(conditions) - set(self.names))
        if unknown:
            raise FlowletError(f"model was built for conditions {list(self.names)}; got unknown {unknown}")
        total = None
        for name in self.names:
            first = self.embedders[name][0].weight
            value = torch.as_tensor(conditions[name], device=first.device, dtype=first.dtype).reshape(-1, 1)
            if value.shape[0] != batch:
                raise FlowletError(f"condition '{name}' has {value.shape[0]} values for a batch of {batch}")
            embedded = self.embedders[name](value)
            if nulls is not None:
                embedded = torch.where(drop[:, None], nulls[name].to(embedded.dtype), embedded)
            total = embedded if total is None else total + embedded
        return total

    def _nulls(self) -> nn.ParameterDict:
        if self.null_embeddings is None:
            raise FlowletError(
                "this model was trained without condition dropout, so it has no unconditional mode "
                "(classifier-free guidance needs condition_dropout > 0)"
            )
        return self.null_embeddings

    def null_embedding(self, batch: int) -> torch.Tensor:
        """The summed null embeddings, i.e. the unconditional condition vector, for ``batch`` samples."""
        nulls = self._nulls()
        return sum(nulls[name] for name in self.names)[None].expand(batch, -1)


class FlowUNet(nn.Module):
    """``model(x, t, {"Age": age01}) -> velocity``, x (N, 8, D, H, W), t (N,) in [0, 1], age01 (N, 1)."""

    def __init__(self, config: UNetConfig) -> None:
        super().__init__()
        config.validate()
        self.config = config
        ch = config.model_channels
        time_dim = 4 * ch
        cond_dim = config.condition_embedding_dim
        groups = config.norm_num_groups
        conditioned = bool(config.condition_vars)
        film_dim = cond_dim if conditioned and config.use_film else None
        cross_dim = cond_dim if conditioned and config.use_cross_attn else None
        if config.use_xformers:
            _xformers_ops()

        def res_block(c_in: int, c_out: int, resample: str | None = None) -> ResBlock:
            return ResBlock(c_in, time_dim, film_dim, c_out, groups, config.dropout, resample, config.use_checkpointing)

        def attention(channels: int) -> AttentionBlock:
            return AttentionBlock(
                channels, config.heads_for(channels), cross_dim, groups, config.use_xformers, config.use_checkpointing
            )

        if conditioned:
            self.condition_embedder = ConditionEmbedder(config.condition_vars, cond_dim, config.condition_dropout)
        if cross_dim is not None and config.num_context_tokens > 1:
            self.context_tokens = nn.Linear(cond_dim, config.num_context_tokens * cond_dim)
        self.time_embed = nn.Sequential(nn.Linear(ch, time_dim), nn.SiLU(), nn.Linear(time_dim, time_dim))

        self.input_blocks = nn.ModuleList([ConditionedSequential(nn.Conv3d(config.in_channels, ch, 3, padding=1))])
        skip_channels = [ch]
        current = ch
        downsample = 1
        last_level = len(config.channel_mult) - 1
        for level, width in enumerate(config.level_channels):
            for _ in range(config.num_res_blocks):
                layers: list[nn.Module] = [res_block(current, width)]
                current = width
                if downsample in config.attention_resolutions:
                    layers.append(attention(current))
                self.input_blocks.append(ConditionedSequential(*layers))
                skip_channels.append(current)
            if level != last_level:
                self.input_blocks.append(ConditionedSequential(res_block(current, current, "down")))
                skip_channels.append(current)
                downsample *= 2

        self.middle_block = ConditionedSequential(
            res_block(current, current), attention(current), res_block(current, current)
        )

        self.output_blocks = nn.ModuleList()
        for level, width in reversed(list(enumerate(config.level_channels))):
            for index in range(config.num_res_blocks + 1):
                layers = [res_block(current + skip_channels.pop(), width)]
                current = width
                if downsample in config.attention_resolutions:
                    layers.append(attention(current))
                if level and index == config.num_res_blocks:
                    layers.append(res_block(current, current, "up"))
                    downsample //= 2
                self.output_blocks.append(ConditionedSequential(*layers))

        self.out = nn.Sequential(
            normalization(current, groups),
            nn.SiLU(),
            zero_module(nn.Conv3d(current, config.out_channels, 3, padding=1)),
        )

    def _drop_mask(self, batch: int, device: torch.device, drop_conditions) -> torch.Tensor | None:
        if drop_conditions is None:
            if self.training and self.config.condition_dropout > 0:
                return torch.rand(batch, device=device) < self.config.condition_dropout
            return None
        if isinstance(drop_conditions, bool):
            return torch.full((batch,), drop_conditions, dtype=torch.bool, device=device)
        return torch.as_tensor(drop_conditions, dtype=torch.bool, device=device).reshape(batch)

    def forward(
        self,
        x: torch.Tensor,
        t: torch.Tensor | float,
        conditions: Mapping[str, torch.Tensor] | None = None,
        drop_conditions: torch.Tensor | bool | None = None,
    ) -> torch.Tensor:
        """Velocity at (x, t). ``conditions`` maps each condition name to (N, 1) values in [0, 1].

        ``drop_conditions`` (bool or (N,) bool) swaps in the learned null embedding (classifier-free
        guidance); ``conditions=None`` means fully unconditional. When left None in training mode, samples
        are dropped at random with probability ``config.condition_dropout``.
        """
        batch = x.shape[0]
        factor = 2 ** (len(self.config.channel_mult) - 1)
        if any(size % factor for size in x.shape[2:]):
            raise FlowletError(f"the U-Net input's spatial size {tuple(x.shape[2:])} must be divisible by {factor}")
        t = torch.as_tensor(t, device=x.device)
        if t.dim() == 0:
            t = t.expand(batch)
        time_weight = self.time_embed[0].weight
        time_emb = self.time_embed(timestep_embedding(t, self.config.model_channels).to(time_weight.dtype))

        cond_emb = context = None
        if self.config.condition_vars:
            drop = self._drop_mask(batch, x.device, drop_conditions)
            cond_emb = self.condition_embedder(conditions, batch, drop)
            if self.config.use_cross_attn:
                if self.config.num_context_tokens > 1:
                    context = self.context_tokens(cond_emb).reshape(batch, self.config.num_context_tokens, -1)
                else:
                    context = cond_emb[:, None]

        h = x
        skips = []
        for block in self.input_blocks:
            h = block(h, time_emb, cond_emb, context)
            skips.append(h)
        h = self.middle_block(h, time_emb, cond_emb, context)
        for block in self.output_blocks:
            h = block(torch.cat([h, skips.pop()], dim=1), time_emb, cond_emb, context)
        return self.out(h)


def count_parameters(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters())


def parameter_count(config: UNetConfig) -> int:
    """Parameters of the network a config describes, built on the meta device (no weights allocated)."""
    with torch.device("meta"):
        return count_parameters(FlowUNet(config))
