"""The generator network, wavelets, checkpoints and conditions against the FlowLet reference fixtures."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np
import pytest
import pywt
import torch

from flowlet.cli import main as flowlet_main
from flowlet.errors import FlowletError
from flowlet.generative import checkpoint as checkpoint_module
from flowlet.generative.checkpoint import load_checkpoint, save_checkpoint
from flowlet.generative.conditions import (
    ConditionRange,
    load_condition_ranges,
    normalise_conditions,
    parse_condition_spec,
)
from flowlet.generative.solvers import guided_velocity, integrate
from flowlet.generative.unet import AttentionBlock, FlowUNet, UNetConfig, count_parameters, preset_config
from flowlet.model import load_checkpoint as public_load_checkpoint
from flowlet.wavelets import center_crop, dwt3d, idwt3d, pad_to_size

PRESETS = Path(__file__).resolve().parents[1] / "flowlet" / "generative" / "presets"


@pytest.fixture(scope="module")
def vectors(reference_checkpoint_dir):
    return torch.load(reference_checkpoint_dir / "tiny_vectors.pt", weights_only=True)


@pytest.fixture(scope="module")
def reference_model(reference_checkpoint_dir):
    model, config = load_checkpoint(reference_checkpoint_dir / "tiny_slim.pth")
    return model, config


@pytest.fixture(scope="module")
def tiny_reference_dict(reference_checkpoint_dir):
    return json.loads((reference_checkpoint_dir / "config.json").read_text())


def randomised(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Zero-initialised output layers make a fresh network output 0; random weights let outputs depend on inputs."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.1)
    return model


def tiny_config(tiny_reference_dict, **overrides) -> UNetConfig:
    return dataclasses.replace(UNetConfig.from_reference_dict(tiny_reference_dict), **overrides)


# ---------------------------------------------------------------- wavelets


def test_dwt_matches_reference_vectors(vectors):
    bands = dwt3d(vectors["dwt_in"])
    assert bands.shape == (1, 8, 16, 16, 16)
    assert torch.allclose(bands, vectors["dwt_bands"], atol=1e-6, rtol=0)
    assert torch.allclose(idwt3d(vectors["dwt_bands"]), vectors["idwt_out"], atol=1e-6, rtol=0)


def test_dwt_bands_equal_pywavelets_band_for_band(vectors):
    volume = vectors["dwt_in"][0, 0].double()
    expected = pywt.dwtn(volume.numpy(), "haar")
    bands = dwt3d(volume[None, None])[0]
    for channel, key in enumerate(["aaa", "aad", "ada", "add", "daa", "dad", "dda", "ddd"]):
        np.testing.assert_allclose(bands[channel].numpy(), expected[key], atol=1e-12, err_msg=key)


def test_dwt_groups_bands_per_input_channel_and_inverts_exactly():
    x = torch.randn(2, 3, 6, 4, 8, dtype=torch.float64)
    bands = dwt3d(x)
    assert bands.shape == (2, 24, 3, 2, 4)
    for c in range(3):  # channel index = c*8 + band
        assert torch.equal(bands[:, c * 8 : c * 8 + 8], dwt3d(x[:, c : c + 1]))
    assert torch.allclose(idwt3d(bands), x, atol=1e-12)
    assert torch.allclose(bands.square().sum(), x.square().sum())  # orthonormal: energy preserved
    # LLL = block sum / (2 sqrt 2)
    assert torch.allclose(bands[0, 0, 0, 0, 0], x[0, 0, :2, :2, :2].sum() / (2 * 2**0.5))


def test_dwt_is_differentiable_and_rejects_odd_sizes():
    x = torch.randn(1, 1, 4, 4, 4, requires_grad=True)
    dwt3d(x)[:, 1:].square().sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    with pytest.raises(FlowletError, match="even"):
        dwt3d(torch.zeros(1, 1, 91, 110, 92))


def test_pad_and_crop_follow_the_reference_offsets():
    x = torch.arange(91 * 109 * 91, dtype=torch.float32).reshape(1, 1, 91, 109, 91)
    padded = pad_to_size(x, (112, 112, 112))
    assert padded.shape == (1, 1, 112, 112, 112)
    # D and W pad 10 in front and 11 behind, H 1 and 2; replicate padding repeats the edge voxels.
    assert torch.equal(padded[0, 0, 10, 1, 10], x[0, 0, 0, 0, 0])
    assert torch.equal(padded[0, 0, 0, 0, 0], x[0, 0, 0, 0, 0])
    assert torch.equal(padded[0, 0, 111, 111, 111], x[0, 0, -1, -1, -1])
    assert torch.equal(padded[0, 0, 100, 109, 100], x[0, 0, -1, -1, -1])
    assert torch.equal(center_crop(padded, (91, 109, 91)), x)
    assert center_crop(torch.zeros(5, 5, 5), (3, 3, 3)).shape == (3, 3, 3)
    with pytest.raises(FlowletError, match="larger"):
        pad_to_size(x, (64, 112, 112))


# ---------------------------------------------------------------- network and reference numerics


def test_both_checkpoint_layouts_load_strictly(reference_checkpoint_dir, reference_model):
    slim, config = reference_model
    training, _ = public_load_checkpoint(
        reference_checkpoint_dir / "tiny_training.pth", config_path=reference_checkpoint_dir / "config.json"
    )
    assert not slim.training and not training.training
    assert count_parameters(slim) == 2_730_088
    assert len(slim.state_dict()) == 220
    raw = torch.load(reference_checkpoint_dir / "tiny_slim.pth", weights_only=True)["model_state_dict"]
    for name, tensor in training.state_dict().items():
        assert torch.equal(tensor, raw[name]), name


def test_forward_reproduces_reference_output(reference_model, vectors):
    model, _ = reference_model
    with torch.no_grad():
        out = model(vectors["forward_x"], vectors["forward_t"], {"Age": vectors["forward_age_normalised"]})
    assert (out - vectors["forward_out"]).abs().max() < 1e-5


def test_euler_sampling_reproduces_reference(reference_model, vectors, reference_checkpoint_dir):
    model, _ = reference_model
    ranges = load_condition_ranges(reference_checkpoint_dir / "condition_ranges.json")
    ages = normalise_conditions({"Age": vectors["euler_ages_years"].tolist()}, ranges)
    x1 = integrate(guided_velocity(model, ages), vectors["euler_x0"], int(vectors["euler_steps"]), "euler")
    assert (x1 - vectors["euler_x1"]).abs().max() < 1e-4


@pytest.mark.parametrize(
    ("preset", "expected"),
    [("base", "356,366,088"), ("large", "1,001,968,392"), ("tiny", "2,730,088")],
)
def test_info_cli_prints_exact_parameter_counts(preset, expected, capsys):
    assert flowlet_main(["info", "--config", str(PRESETS / f"{preset}.json")]) == 0
    assert f"parameters: {expected}" in capsys.readouterr().out


def test_presets_by_name():
    assert preset_config("base").level_channels == (128, 256, 384, 512)
    assert preset_config("large").attention_resolutions == (4, 8)
    with pytest.raises(FlowletError, match="available"):
        preset_config("huge")


def test_info_cli_reports_a_bad_config(tmp_path, capsys):
    bad = tmp_path / "config.json"
    bad.write_text(json.dumps({"unet_model_channels": 30, "unet_norm_num_groups": 32}))
    assert flowlet_main(["info", "--config", str(bad)]) == 1
    assert "not divisible" in capsys.readouterr().err


def test_default_extensions_keep_the_reference_state_dict(tiny_reference_dict, reference_model):
    model, config = reference_model
    reference_shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    explicit = tiny_config(
        tiny_reference_dict, num_context_tokens=1, use_film=True, use_cross_attn=True, condition_dropout=0.0
    )
    assert {k: tuple(v.shape) for k, v in FlowUNet(explicit).state_dict().items()} == reference_shapes
    round_trip = UNetConfig.from_reference_dict(config.to_reference_dict())
    assert round_trip == config
    written = config.to_reference_dict()
    assert written["unet_channel_mult"] == "1,2" and written["unet_attention_res"] == "2"
    assert written["num_flow_steps"] == 4  # training/sampling keys survive


def test_reference_disable_cross_attn_keeps_film(tiny_reference_dict):
    config = UNetConfig.from_reference_dict({**tiny_reference_dict, "unet_disable_cross_attn": True})
    assert not config.use_cross_attn and config.use_film
    names = FlowUNet(config).state_dict().keys()
    assert not any("to_q_cross" in n for n in names)
    assert any("cond_emb_layers" in n for n in names)


@pytest.mark.parametrize("switch", ["use_film", "use_cross_attn"])
def test_each_conditioning_path_alone_still_conditions_on_age(tiny_reference_dict, switch):
    config = tiny_config(tiny_reference_dict, **{switch: False})
    model = randomised(FlowUNet(config)).eval()
    names = model.state_dict().keys()
    removed = "cond_emb_layers" if switch == "use_film" else "to_kv_cross"
    assert not any(removed in n for n in names)
    x = torch.randn(1, 8, 8, 8, 8)
    with torch.no_grad():
        young = model(x, torch.tensor([0.5]), {"Age": torch.tensor([[0.1]])})
        old = model(x, torch.tensor([0.5]), {"Age": torch.tensor([[0.9]])})
    assert (young - old).abs().max() > 1e-3


def test_both_conditioning_paths_off_is_rejected(tiny_reference_dict):
    with pytest.raises(FlowletError, match="both"):
        tiny_config(tiny_reference_dict, use_film=False, use_cross_attn=False)


def test_several_context_tokens_make_cross_attention_spatially_adaptive():
    torch.manual_seed(0)
    x = torch.randn(1, 16, 4, 4, 4)
    spreads = {}
    for tokens in (1, 4):
        block = AttentionBlock(16, heads=2, cond_dim=12, groups=4).eval()
        torch.nn.init.normal_(block.proj_out.weight)  # undo the zero init so the branch is visible
        contexts = torch.randn(2, 1, tokens, 12)
        with torch.no_grad():
            change = block(x, None, None, contexts[0]) - block(x, None, None, contexts[1])
        # Per channel, how much the context's effect varies across voxels.
        spreads[tokens] = change.flatten(2).std(dim=2).max().item()
    assert spreads[1] < 1e-5  # one token: softmax over one key is 1, a voxel-independent bias
    assert spreads[4] > 1e-3


def test_context_tokens_and_extra_condition_run_end_to_end(tiny_reference_dict):
    config = tiny_config(tiny_reference_dict, num_context_tokens=3, condition_vars=("Age", "Sex"))
    model = randomised(FlowUNet(config)).eval()
    assert model.context_tokens.out_features == 3 * config.condition_embedding_dim
    assert set(model.condition_embedder.embedders) == {"Age", "Sex"}
    x = torch.randn(2, 8, 8, 8, 8)
    conditions = {"Age": torch.tensor([[0.3], [0.3]]), "Sex": torch.tensor([[0.0], [1.0]])}
    with torch.no_grad():
        out = model(x[:1].expand(2, -1, -1, -1, -1), torch.tensor([0.4, 0.4]), conditions)
    assert out.shape == (2, 8, 8, 8, 8)
    assert (out[0] - out[1]).abs().max() > 1e-3  # Sex changes the prediction
    with pytest.raises(FlowletError, match="missing.*Sex"):
        model(x, torch.tensor([0.4, 0.4]), {"Age": conditions["Age"]})


def test_condition_dropout_gives_an_unconditional_mode(tiny_reference_dict):
    plain = FlowUNet(tiny_config(tiny_reference_dict))
    assert not any("null_embeddings" in n for n in plain.state_dict())
    with pytest.raises(FlowletError, match="condition dropout"):
        plain(torch.randn(1, 8, 8, 8, 8), torch.tensor([0.5]), None)
    with pytest.raises(FlowletError, match="condition dropout"):
        guided_velocity(plain, {"Age": torch.tensor([[0.5]])}, guidance_scale=2.0)(
            torch.randn(1, 8, 8, 8, 8), torch.tensor([0.5])
        )

    model = randomised(FlowUNet(tiny_config(tiny_reference_dict, condition_dropout=0.2))).eval()
    assert set(model.condition_embedder.null_embeddings) == {"Age"}
    x = torch.randn(2, 8, 8, 8, 8)
    t = torch.tensor([0.2, 0.6])
    ages = {"Age": torch.tensor([[0.1], [0.9]])}
    with torch.no_grad():
        unconditional = model(x, t, None)
        dropped = model(x, t, ages, drop_conditions=True)
        conditional = model(x, t, ages)
        mixed = model(x, t, ages, drop_conditions=torch.tensor([True, False]))
    assert torch.allclose(unconditional, dropped)
    assert (conditional - unconditional).abs().max() > 1e-3
    assert torch.allclose(mixed[0], unconditional[0]) and torch.allclose(mixed[1], conditional[1])


def test_condition_dropout_in_training_drops_about_the_requested_share(tiny_reference_dict):
    model = FlowUNet(tiny_config(tiny_reference_dict, condition_dropout=0.5)).train()
    embedded = []
    model.condition_embedder.register_forward_hook(lambda module, args, out: embedded.append(out))
    torch.manual_seed(0)
    model(torch.randn(64, 8, 4, 4, 4), torch.rand(64), {"Age": torch.rand(64, 1)})
    null = model.condition_embedder.null_embedding(1)[0]
    share = (embedded[0] == null).all(dim=1).float().mean().item()
    assert 0.3 < share < 0.7


def test_gradient_checkpointing_gives_the_same_gradients(tiny_reference_dict):
    grads = []
    for flag in (False, True):
        torch.manual_seed(0)
        model = randomised(FlowUNet(tiny_config(tiny_reference_dict, use_checkpointing=flag))).train()
        x = torch.randn(2, 8, 8, 8, 8)
        model(x, torch.tensor([0.1, 0.9]), {"Age": torch.tensor([[0.2], [0.7]])}).square().mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_unet_rejects_inputs_it_cannot_downsample(reference_model):
    model, _ = reference_model
    with pytest.raises(FlowletError, match="divisible"):
        model(torch.zeros(1, 8, 9, 8, 8), torch.tensor([0.5]), {"Age": torch.tensor([[0.5]])})


def test_missing_xformers_warns_once(tiny_reference_dict, caplog, monkeypatch):
    from flowlet.generative import unet

    monkeypatch.setattr(unet, "_xformers_warning_given", False)
    monkeypatch.setattr(unet.importlib.util, "find_spec", lambda name: None)
    with caplog.at_level(logging.WARNING, logger="flowlet.generative.unet"):
        model = FlowUNet(tiny_config(tiny_reference_dict, use_xformers=True))
        FlowUNet(tiny_config(tiny_reference_dict, use_xformers=True))
    assert sum("xformers" in r.message for r in caplog.records) == 1
    with torch.no_grad():  # falls back to SDPA
        assert model(torch.zeros(1, 8, 4, 4, 4), torch.tensor([0.5]), {"Age": torch.tensor([[0.5]])}).shape[1] == 8


# ---------------------------------------------------------------- checkpoint files


def _record_execution(marker: str) -> str:
    Path(marker).write_text("code from the checkpoint ran")
    return marker


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (_record_execution, (self.marker,))


def test_checkpoint_with_pickled_objects_is_refused_without_running_code(tmp_path, reference_checkpoint_dir):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    state = torch.load(reference_checkpoint_dir / "tiny_slim.pth", weights_only=True)
    torch.save({**state, "payload": _Exploit(marker)}, path)
    with pytest.raises(FlowletError, match="evil.pth.*refusing|refusing.*evil.pth"):
        load_checkpoint(path)
    assert not marker.exists()
    torch.load(path, weights_only=False)  # proves the payload is live when unpickled unsafely
    assert marker.exists()


def test_missing_and_corrupt_checkpoints_name_the_file(tmp_path, reference_checkpoint_dir):
    with pytest.raises(FlowletError, match="nowhere.pth.*does not exist"):
        load_checkpoint(tmp_path / "nowhere.pth")
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes((reference_checkpoint_dir / "tiny_slim.pth").read_bytes()[:5000])
    with pytest.raises(FlowletError, match="truncated.pth.*corrupt"):
        load_checkpoint(truncated)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(FlowletError, match="garbage.pth"):
        load_checkpoint(garbage)


def test_config_weight_mismatch_lists_keys_and_shapes(tmp_path, reference_checkpoint_dir, tiny_reference_dict):
    no_cross = tmp_path / "no_cross.json"
    no_cross.write_text(json.dumps({**tiny_reference_dict, "unet_disable_cross_attn": True}))
    with pytest.raises(FlowletError, match=r"unexpected keys: .*to_q_cross") as error:
        load_checkpoint(reference_checkpoint_dir / "tiny_slim.pth", config_path=no_cross)
    assert "tiny_slim.pth" in str(error.value)

    wider = tmp_path / "wider.json"
    wider.write_text(
        json.dumps({**tiny_reference_dict, "condition_embedding_dim": 32, "condition_vars": ["Age", "Sex"]})
    )
    with pytest.raises(FlowletError) as error:
        load_checkpoint(reference_checkpoint_dir / "tiny_slim.pth", config_path=wider)
    message = str(error.value)
    assert "missing keys" in message and "condition_embedder.embedders.Sex.0.weight" in message
    assert "shape mismatches" in message and "checkpoint (64, 1) vs config (32, 1)" in message


def test_checkpoint_without_config_needs_a_config_path(tmp_path, reference_checkpoint_dir):
    raw = tmp_path / "raw.pth"
    state = torch.load(reference_checkpoint_dir / "tiny_slim.pth", weights_only=True)["model_state_dict"]
    torch.save(state, raw)
    with pytest.raises(FlowletError, match="config"):
        load_checkpoint(raw)
    model, _ = load_checkpoint(raw, config_path=reference_checkpoint_dir / "config.json")
    assert torch.equal(model.state_dict()["out.2.weight"], state["out.2.weight"])


def test_save_checkpoint_round_trips_in_the_training_layout(tmp_path, reference_model):
    model, config = reference_model
    path = save_checkpoint(tmp_path / "run" / "last.pth", model, config, {"epoch": 7, "best_val_loss": 0.25})
    payload = torch.load(path, weights_only=True)
    assert {"flow_net_state_dict", "config", "epoch", "best_val_loss"} <= set(payload)
    assert payload["config"]["unet_model_channels"] == 32
    reloaded, reloaded_config = load_checkpoint(path)
    assert reloaded_config == config
    for name, tensor in model.state_dict().items():
        assert torch.equal(reloaded.state_dict()[name], tensor)


def test_interrupted_save_leaves_the_previous_checkpoint_intact(tmp_path, reference_model, monkeypatch):
    model, config = reference_model
    path = save_checkpoint(tmp_path / "best.pth", model, config, {"epoch": 1})
    before = path.read_bytes()

    def crash(payload, stream):
        stream.write(b"half a checkpoint")
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoint_module.torch, "save", crash)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(path, model, config, {"epoch": 2})
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["best.pth"]


# ---------------------------------------------------------------- conditions


def test_conditions_are_normalised_clamped_and_warned(reference_checkpoint_dir, caplog):
    ranges = load_condition_ranges(reference_checkpoint_dir / "condition_ranges.json")
    assert ranges["Age"].min == pytest.approx(5.9) and ranges["Age"].max == pytest.approx(95.46)
    with caplog.at_level(logging.WARNING):
        normalised = normalise_conditions({"Age": [5.9, 50.68, 100.0, 2.0]}, ranges)["Age"]
    assert normalised.shape == (4, 1) and normalised.dtype == torch.float32
    assert torch.allclose(normalised[:, 0], torch.tensor([0.0, 0.5, 1.0, 0.0]), atol=1e-6)
    assert "100.0" in caplog.text and "2.0" in caplog.text and "Age" in caplog.text
    both = normalise_conditions(
        {"Age": [20.0, 40.0], "Sex": 1.0}, {**ranges, "Sex": ranges["Age"]._replace(min=0.0, max=1.0)}
    )
    assert both["Sex"].shape == (2, 1)


def test_the_ranges_own_bounds_are_inside_it(caplog):
    # 75.83 rounds up in float32 and then scales one ulp above 1: the warning must not call it out of range.
    ranges = {"Age": ConditionRange(20.91, 75.83)}
    with caplog.at_level(logging.WARNING):
        normalised = normalise_conditions({"Age": [20.91, 75.83]}, ranges)["Age"]
    assert "outside" not in caplog.text
    assert normalised[:, 0].tolist() == [0.0, 1.0]


def test_bad_conditions_are_user_errors(reference_checkpoint_dir, tmp_path):
    ranges = load_condition_ranges(reference_checkpoint_dir / "condition_ranges.json")
    with pytest.raises(FlowletError, match="unknown condition 'Height'"):
        normalise_conditions({"Height": 170.0}, ranges)
    with pytest.raises(FlowletError, match="Age"):
        normalise_conditions({"Age": ["old"]}, ranges)
    bad = tmp_path / "ranges.json"
    bad.write_text(json.dumps({"Age": {"min": 90, "max": 10}}))
    with pytest.raises(FlowletError, match="ranges.json.*Age"):
        load_condition_ranges(bad)
    with pytest.raises(FlowletError, match="does not exist"):
        load_condition_ranges(tmp_path / "absent.json")
    assert parse_condition_spec("Age=45,Sex=1") == {"Age": 45.0, "Sex": 1.0}
    with pytest.raises(FlowletError, match="NAME=VALUE"):
        parse_condition_spec("45")
    with pytest.raises(FlowletError, match="not a number"):
        parse_condition_spec("Age=old")
