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
from pathlib import Path

from flowlet.generative.flows import FLOW_NAMES, TIME_SAMPLERS
from flowlet.generative.train import OUTPUT_INITS, TrainingOptions, train
from flowlet.generative.unet import UNetConfig, load_config, preset_config

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
    source.add_argument("--preset", default="base", help="shipped architecture: tiny, base or large (default: base)")
    source.add_argument("--config", type=Path, help="reference-format config.json to take the architecture from")
    arch.add_argument("--model-channels", type=int, help="base channel count C")
    arch.add_argument("--channel-mult", type=int, nargs="+", help="channel multiplier per level, e.g. 1 2 3 4")
    arch.add_argument("--attention-res", type=int, nargs="*", help="downsampling factors with attention, e.g. 16 8")
    arch.add_argument("--num-res-blocks", type=int, help="residual blocks per level")
    arch.add_argument("--num-heads", type=int, help="attention heads")
    arch.add_argument("--norm-num-groups", type=int, help="GroupNorm groups")
    arch.add_argument("--condition-embedding-dim", type=int, help="condition embedding width")
    arch.add_argument("--num-context-tokens", type=int, help="cross-attention context tokens (1 = reference)")
    arch.add_argument("--use-film", action=argparse.BooleanOptionalAction, default=None, help="condition FiLM in ResBlocks")
    arch.add_argument("--use-cross-attn", action=argparse.BooleanOptionalAction, default=None, help="condition cross-attention")
    arch.add_argument("--dropout", type=float, help="dropout inside ResBlocks")
    arch.add_argument("--condition-dropout", type=float,
                      help="probability of training a sample unconditionally (enables classifier-free guidance)")
    arch.add_argument("--condition-vars", nargs="+", choices=("Age", "Sex"), help="conditions, e.g. Age Sex")
    arch.add_argument("--grad-checkpointing", action=argparse.BooleanOptionalAction, default=None,
                      help="recompute activations in the backward pass to save memory (default: the preset's)")
    arch.add_argument("--model-input-size", type=int, nargs=3, metavar=("D", "H", "W"),
                      help="padded volume size (default: the config's when it fits at --downsample 1, else the smallest that fits)")
    arch.add_argument("--downsample", type=int, default=1,
                      help="train at 1/N resolution (2: 2 mm volumes become 4 mm; generation upsamples back)")

    opt = parser.add_argument_group("optimisation")
    opt.add_argument("--flow", choices=FLOW_NAMES, default="rectified", help="probability path (default rectified)")
    opt.add_argument("--time-sampling", choices=tuple(TIME_SAMPLERS),
                     help="distribution of t (default: uniform; stratified for vp_diffusion)")
    opt.add_argument("--lll-loss-weight", type=float, default=1.0, help="weight of the LLL-band MSE")
    opt.add_argument("--detail-loss-weight", type=float, default=1.0, help="weight of the detail-band MSE")
    opt.add_argument("--steps", type=int, default=20000, help="total optimisation steps (epochs follow from the data size)")
    opt.add_argument("--batch-size", type=int, default=4, help="volumes per step per process")
    opt.add_argument("--lr", type=float, default=1e-4, help="peak AdamW learning rate")
    opt.add_argument("--min-lr", type=float, default=1e-6, help="learning rate at the end of the cosine decay")
    opt.add_argument("--warmup-steps", type=int, default=500, help="linear learning-rate warm-up steps")
    opt.add_argument("--weight-decay", type=float, default=1e-5, help="AdamW weight decay (not on biases and norms)")
    opt.add_argument("--adam-beta2", type=float, default=0.999,
                     help="AdamW second-moment decay; 0.99 or 0.95 forget the large early gradients of the mean image "
                          "sooner, so the noise-dependent part of the velocity is learnt in fewer steps")
    opt.add_argument("--grad-clip-norm", type=float, default=1.0, help="gradient norm clip (0 disables)")
    opt.add_argument("--ema-decay", type=float, default=0.999, help="EMA decay of the weights (0 disables)")
    opt.add_argument("--output-init", choices=OUTPUT_INITS, default="zero",
                     help="initial weights of the network's last convolution: zero (the reference, improved-diffusion) "
                          "or PyTorch's default random init, which learns to use the noisy input sooner in short runs")
    opt.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True,
                     help="rotation/intensity/noise augmentation of the reference")
    opt.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                     help="CUDA autocast dtype (auto: bf16 where supported, else fp16 with a gradient scaler); CPU is fp32")

    run_group = parser.add_argument_group("run")
    run_group.add_argument("--condition-ranges", type=Path,
                           help="condition_ranges.json to normalise with (default: min/max of the table)")
    run_group.add_argument("--val-split", type=float, default=0.2, help="fraction of rows held out for validation")
    run_group.add_argument("--val-every", type=int, default=500, help="validate (and update checkpoint_best) every N steps")
    run_group.add_argument("--checkpoint-every", type=int, default=500, help="write checkpoint_last.pth every N steps")
    run_group.add_argument("--log-every", type=int, default=10, help="write a loss.tsv row (interval mean) every N steps")
    run_group.add_argument("--max-steps-per-run", type=int,
                           help="stop after this many steps in this invocation (for wall-time-limited jobs); rerun to continue")
    run_group.add_argument("--seed", type=int, default=42, help="seed of the split, batches, augmentation, t and noise")
    run_group.add_argument("--resume", type=Path,
                           help="checkpoint to resume from (default: checkpoint_last.pth in --output-dir when present)")
    run_group.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto", help="training device")
    run_group.add_argument("--threads", type=int, help="CPU threads for torch (default: torch's choice)")
    run_group.add_argument("--num-workers", type=int, default=0, help="DataLoader worker processes for augmentation")


def architecture_from_args(args: argparse.Namespace) -> UNetConfig:
    config = load_config(args.config) if args.config is not None else preset_config(args.preset)
    overrides = {
        field: getattr(args, flag) for flag, field in ARCHITECTURE_OVERRIDES.items() if getattr(args, flag) is not None
    }
    return dataclasses.replace(config, **overrides) if overrides else config


def run(args: argparse.Namespace) -> int:

    options = TrainingOptions(
        table=args.table,
        output_dir=args.output_dir,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        adam_beta2=args.adam_beta2,
        warmup_steps=args.warmup_steps,
        min_lr=args.min_lr,
        grad_clip_norm=args.grad_clip_norm,
        ema_decay=args.ema_decay,
        output_init=args.output_init,
        flow=args.flow,
        time_sampling=args.time_sampling,
        lll_loss_weight=args.lll_loss_weight,
        detail_loss_weight=args.detail_loss_weight,
        condition_ranges=args.condition_ranges,
        val_split=args.val_split,
        val_every=args.val_every,
        checkpoint_every=args.checkpoint_every,
        log_every=args.log_every,
        max_steps_per_run=args.max_steps_per_run,
        seed=args.seed,
        precision=args.precision,
        downsample=args.downsample,
        model_input_size=tuple(args.model_input_size) if args.model_input_size else None,
        augment=args.augment,
        num_workers=args.num_workers,
        device=args.device,
        resume=args.resume,
    )
    summary = train(options, architecture_from_args(args), threads=args.threads)
    log.info("training stopped at step %d; best selection loss %.6g; outputs in %s",
             summary.steps_done, summary.best_metric, summary.output_dir)
    return 0
