"""`flowlet info --config CONFIG.json`: a generator configuration's parameter count and summary.

The network is built on the meta device, so even the 1 B-parameter configuration costs no memory.
"""

from __future__ import annotations

import argparse

from flowlet.generative.unet import load_config, parameter_count


def build_parser(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config",
        required=True,
        help="reference-format config.json (e.g. flowlet/generative/presets/base.json)",
    )


def run(args: argparse.Namespace) -> int:
    config = load_config(args.config)
    heads = {channels: config.heads_for(channels) for channels in config.level_channels}
    grid = config.wavelet_grid
    lines = [
        f"config: {args.config}",
        f"parameters: {parameter_count(config):,}",
        f"levels: channels {list(config.level_channels)}, {config.num_res_blocks} res blocks each, "
        f"attention at downsampling factors {list(config.attention_resolutions)}, heads {heads}",
        f"conditions: {list(config.condition_vars)} -> {config.condition_embedding_dim}-d embedding; "
        f"FiLM {'on' if config.use_film else 'off'}, cross-attention "
        f"{f'on ({config.num_context_tokens} context tokens)' if config.use_cross_attn else 'off'}, "
        f"condition dropout {config.condition_dropout}",
        f"input: volumes {list(config.save_size)} padded to {list(config.model_input_size)} -> "
        f"{config.in_channels} wavelet channels at {grid[0]}x{grid[1]}x{grid[2]}",
        f"gradient checkpointing {'on' if config.use_checkpointing else 'off'}, "
        f"xformers {'requested' if config.use_xformers else 'off'}",
    ]
    if config.extra:
        lines.append("other keys: " + ", ".join(f"{k}={v}" for k, v in config.extra.items()))
    print("\n".join(lines))
    return 0
