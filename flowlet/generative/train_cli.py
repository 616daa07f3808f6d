"""`flowlet train`: train the wavelet flow-matching generator on a table of preprocessed MNI-space volumes.

Writes to --output-dir: checkpoint_last.pth (everything needed to resume), checkpoint_best.pth (lowest
validation loss; weights, EMA weights and config), config.json (reference format plus our keys),
condition_ranges.json, loss.tsv and loss.png. Rerunning with the same --output-dir resumes from
checkpoint_last.pth and continues exactly as an uninterrupted run would have.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import typing
from pathlib import Path

from flowlet.generative.flows import FLOW_NAMES, TIME_SAMPLERS
from flowlet.generative.loss import LOSS_SPACES
from flowlet.generative.sampling_spec import PREDICTIONS, STANDARDISE_PER
from flowlet.generative.train import train
from flowlet.generative.training_options import OUTPUT_INITS, TrainingOptions, option_defaults, settings_over_preset
from flowlet.generative.unet import UNetConfig, load_config, preset_config, preset_training

log = logging.getLogger(__name__)

# CLI flag -> UNetConfig field, for architecture overrides of the preset/config.
ARCHITECTURE_OVERRIDES = {
    "model_channels": "model_channels",
    "channel_mult": "channel_mult",
    "attention_res": "attention_resolutions",
    "num_res_blocks": "num_res_blocks",
    "num_heads": "num_heads",
    "norm_num_groups": "norm_num_groups",
    "condition_embedding_dim": "condition_embedding_dim",
    "num_context_tokens": "num_context_tokens",
    "use_film": "use_film",
    "use_cross_attn": "use_cross_attn",
    "dropout": "dropout",
    "condition_dropout": "condition_dropout",
    "condition_vars": "condition_vars",
    "grad_checkpointing": "use_checkpointing",
}


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("table", type=Path, help="TSV with columns image (path), age and optionally sex (0/1 or M/F)")
    parser.add_argument("--output-dir", type=Path, required=True, help="folder for checkpoints, config and loss log")

    arch = parser.add_argument_group("architecture (a preset or config.json, then overrides)")
    source = arch.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        default="cpu",
        help="shipped architecture: base or large (the published FlowLet ones; take base on a GPU), tiny, smoke "
        "(a 16-channel network for checking a set-up in minutes), or "
        "cpu (a lean network for 8 mm studies on a CPU, with the training settings it was tuned with; flags "
        "given here override them) (default: cpu, as the workflow's)",
    )
    source.add_argument("--config", type=Path, help="reference-format config.json to take the architecture from")
    arch.add_argument("--model-channels", type=int, help="base channel count C")
    arch.add_argument("--channel-mult", type=int, nargs="+", help="channel multiplier per level, e.g. 1 2 3 4")
    arch.add_argument("--attention-res", type=int, nargs="*", help="downsampling factors with attention, e.g. 16 8")
    arch.add_argument("--num-res-blocks", type=int, help="residual blocks per level")
    arch.add_argument("--num-heads", type=int, help="attention heads")
    arch.add_argument("--norm-num-groups", type=int, help="GroupNorm groups")
    arch.add_argument("--condition-embedding-dim", type=int, help="condition embedding width")
    arch.add_argument("--num-context-tokens", type=int, help="cross-attention context tokens (1 = reference)")
    arch.add_argument(
        "--use-film", action=argparse.BooleanOptionalAction, default=None, help="condition FiLM in ResBlocks"
    )
    arch.add_argument(
        "--use-cross-attn", action=argparse.BooleanOptionalAction, default=None, help="condition cross-attention"
    )
    arch.add_argument("--dropout", type=float, help="dropout inside ResBlocks")
    arch.add_argument(
        "--condition-dropout",
        type=float,
        help="probability of training a sample unconditionally (enables classifier-free guidance)",
    )
    arch.add_argument("--condition-vars", nargs="+", choices=("Age", "Sex"), help="conditions, e.g. Age Sex")
    arch.add_argument(
        "--grad-checkpointing",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="recompute activations in the backward pass to save memory (default: the preset's)",
    )

    groups = {
        "architecture": arch,
        "optimisation": parser.add_argument_group("optimisation"),
        "run": parser.add_argument_group("run"),
    }
    add_option_flags(groups)
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")


# Every TrainingOptions field but the two positional ones is a flag; its default lives only in the dataclass
# (or in the preset's "training" block), so flags default to None, meaning "not given".
OPTION_FLAGS: dict[str, tuple[str, str]] = {
    # field: (group, help)
    "model_input_size": (
        "architecture",
        "padded volume size D H W (default: the config's when it fits at --downsample 1, else the smallest that fits)",
    ),
    "downsample": ("architecture", "train at 1/N resolution (2: 2 mm volumes become 4 mm; generation upsamples back)"),
    "flow": ("optimisation", "probability path"),
    "time_sampling": ("optimisation", "distribution of t (unset: uniform; stratified for vp_diffusion)"),
    "prediction": (
        "optimisation",
        "what the network predicts: velocity (the reference); data, the clean wavelet bands, "
        "from which sampling derives the velocity (x1_hat - x_t) / (1 - t); or preconditioned data, "
        "x1_hat = c_skip(t) x_t + c_out(t) F (EDM); recorded in the checkpoint",
    ),
    "loss_space": (
        "optimisation",
        "compare prediction and target as velocities (the reference), as clean data, or as clean data weighted by "
        "min(SNR, 5) / 5 (Min-SNR)",
    ),
    "standardise_bands": (
        "optimisation",
        "standardise every wavelet subband to zero mean and unit variance over the "
        "training set (raw Haar detail bands are near zero, so noise drowns them); "
        "recorded in the checkpoint",
    ),
    "standardise_per": (
        "optimisation",
        "with --standardise-bands: one mean and spread per subband, or per subband and voxel (over the "
        "augmented training set), which keeps the network's errors small where the training brains agree, "
        "such as the background; the maps are saved in the checkpoint",
    ),
    "voxel_std_floor": (
        "optimisation",
        "with --standardise-per voxel: a voxel's spread is at least this fraction of its subband's",
    ),
    "lll_loss_weight": ("optimisation", "weight of the LLL-band MSE"),
    "detail_loss_weight": ("optimisation", "weight of the detail-band MSE"),
    "steps": ("optimisation", "total optimisation steps (epochs follow from the data size)"),
    "batch_size": ("optimisation", "volumes per step per process"),
    "lr": ("optimisation", "peak AdamW learning rate"),
    "min_lr": ("optimisation", "learning rate at the end of the cosine decay (equal to --lr: constant)"),
    "warmup_steps": ("optimisation", "linear learning-rate warm-up steps"),
    "weight_decay": ("optimisation", "AdamW weight decay (not on biases and norms)"),
    "adam_beta2": (
        "optimisation",
        "AdamW second-moment decay; 0.99 or 0.95 forget the large early gradients of the "
        "mean image sooner, so short runs learn faster",
    ),
    "grad_clip_norm": ("optimisation", "gradient norm clip (0 disables)"),
    "ema_decay": ("optimisation", "EMA decay of the weights (0 disables), warmed up as min(decay, (1 + n) / (10 + n))"),
    "output_init": (
        "optimisation",
        "initial weights of the last convolution: zero (the reference, improved-diffusion) or "
        "PyTorch's default random init, which learns to use the noisy input sooner",
    ),
    "augment": (
        "optimisation",
        "the reference's rotation/intensity/noise augmentation (a generator can give back what it is shown)",
    ),
    "flip_probability": ("optimisation", "probability of mirroring a training volume left-right"),
    "elastic_mm": (
        "optimisation",
        "SD in mm of a smooth random deformation of every training volume's interior (control points every 4 "
        "working voxels; the outline stays; 0 disables)",
    ),
    "precision": (
        "optimisation",
        "autocast dtype (auto: on CUDA bf16 where supported, else fp16 with a gradient scaler; on a CPU bf16 "
        "where it has native bf16 arithmetic, else fp32)",
    ),
    "condition_ranges": ("run", "condition_ranges.json to normalise with (default: min/max of the table)"),
    "val_split": ("run", "fraction of rows held out for validation"),
    "val_every": ("run", "validate (and update checkpoint_best) every N steps"),
    "checkpoint_every": ("run", "write checkpoint_last.pth every N steps"),
    "log_every": ("run", "write a loss.tsv row (interval mean) every N steps"),
    "max_steps_per_run": (
        "run",
        "stop after this many steps in this invocation (for wall-time-limited jobs); rerun to continue",
    ),
    "seed": ("run", "seed of the split, batches, augmentation, t and noise"),
    "resume": (
        "run",
        "checkpoint to resume from, whatever its settings (default: checkpoint_last.pth in --output-dir when it was "
        "trained with the same settings and table; a run of other settings there is moved into superseded-<UTC time>/)",
    ),
    "init_checkpoint": (
        "run",
        "start from these weights (ours or a released FlowLet checkpoint; EMA too where present) "
        "with a fresh optimiser and schedule; the architecture must match exactly",
    ),
    "device": ("run", "training device"),
    "num_workers": ("run", "DataLoader worker processes for augmentation"),
}
OPTION_CHOICES = {
    "flow": FLOW_NAMES,
    "time_sampling": tuple(TIME_SAMPLERS),
    "prediction": PREDICTIONS,
    "loss_space": LOSS_SPACES,
    "standardise_per": STANDARDISE_PER,
    "output_init": OUTPUT_INITS,
    "precision": ("auto", "fp32", "bf16", "fp16"),
    "device": ("auto", "cpu", "cuda"),
}
POSITIONAL_OPTIONS = ("table", "output_dir")


def add_option_flags(groups: dict[str, argparse._ArgumentGroup]) -> None:
    types = typing.get_type_hints(TrainingOptions)
    defaults = option_defaults()
    for name, (group, help_text) in OPTION_FLAGS.items():
        flag = "--" + name.replace("_", "-")
        kind = types[name]
        base = next((t for t in typing.get_args(kind) if t is not type(None)), kind)
        default = defaults[name]
        shown = f" (default: the preset's, else {default})" if default is not None else ""
        if base is bool:
            groups[group].add_argument(
                flag, action=argparse.BooleanOptionalAction, default=None, help=help_text + shown
            )
        elif typing.get_origin(base) is tuple:
            groups[group].add_argument(flag, type=int, nargs=3, metavar=("D", "H", "W"), help=help_text)
        else:
            groups[group].add_argument(flag, type=base, choices=OPTION_CHOICES.get(name), help=help_text + shown)


def options_from_args(args: argparse.Namespace) -> TrainingOptions:
    """TrainingOptions from its defaults, then the preset's training settings, then the flags given."""
    recipe = preset_training(args.preset) if args.config is None else {}
    given = {name: getattr(args, name) for name in OPTION_FLAGS}
    if given.get("model_input_size") is not None:
        given["model_input_size"] = tuple(given["model_input_size"])
    settings = settings_over_preset(args.preset, recipe, given)
    return TrainingOptions(**{**settings, "table": args.table, "output_dir": args.output_dir})


def architecture_from_args(args: argparse.Namespace) -> UNetConfig:
    config = load_config(args.config) if args.config is not None else preset_config(args.preset)
    overrides = {
        field: getattr(args, flag) for flag, field in ARCHITECTURE_OVERRIDES.items() if getattr(args, flag) is not None
    }
    return dataclasses.replace(config, **overrides) if overrides else config


def run(args: argparse.Namespace) -> int:
    summary = train(options_from_args(args), architecture_from_args(args), threads=args.threads)
    log.info(
        "training stopped at step %d; best selection loss %.6g; outputs in %s",
        summary.steps_done,
        summary.best_metric,
        summary.output_dir,
    )
    return 0
