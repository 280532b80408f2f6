"""Every YAML preset in configs/ loads into its command's config (no stale or misspelt keys)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

import cli
from cameo_eqx.config import load_yaml_defaults

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_preset_loads(path: Path):
    data = yaml.safe_load(path.read_text())
    sections = [k for k in data if k in cli.COMMANDS]
    assert sections, f"{path.name}: no section named after a command ({sorted(cli.COMMANDS)})"
    for command in sections:
        cls = cli._load(cli.COMMANDS[command][0])
        cfg = load_yaml_defaults(cls, path, command)
        if hasattr(cfg, "validate"):
            cfg.validate()


def test_a_file_without_the_commands_section_is_an_error(tmp_path: Path):
    """`train --config configs/mdcath.yaml` (sections, none for train) must not train with defaults."""
    from cameo_eqx.config import ConfigError
    from cameo_eqx.training.config import TrainConfig

    mdcath = Path(__file__).resolve().parents[1] / "configs" / "mdcath.yaml"
    with pytest.raises(ConfigError, match=r"no 'train:' section for the train command; the file's sections are \['prepare'\]"):
        load_yaml_defaults(TrainConfig, mdcath, "train")
    with pytest.raises(ConfigError, match="no 'train:' section"):  # the command line too
        cli.main(["train", "--config", str(mdcath)])
    # a flat file (no sections) still loads, also when options hold mappings
    flat = tmp_path / "flat.yaml"
    flat.write_text("model: {backbone: painn, preset: small}\ndata: {cutoff: 9.0}\nmax_steps: 3\n")
    cfg = load_yaml_defaults(TrainConfig, flat, "train")
    assert cfg.data.cutoff == 9.0 and cfg.max_steps == 3 and cfg.model.preset == "small"


def test_default_preset_is_valid_for_every_backbone():
    """`ModelConfig.preset` defaults to None, resolved by `make_backbone` to a preset each backbone has
    (Allegro has no 'small'); PaiNN and MACE keep 'small', so the default model is unchanged."""
    import jax

    from cameo_eqx.modules.backbones import BACKBONES, DEFAULT_PRESETS, backbone_presets, make_backbone
    from cameo_eqx.training.config import ModelConfig, TrainConfig

    assert ModelConfig().preset is None
    assert set(DEFAULT_PRESETS) == set(BACKBONES)
    for name, cls in BACKBONES.items():
        assert DEFAULT_PRESETS[name] in backbone_presets(cls), name
    assert DEFAULT_PRESETS["painn"] == DEFAULT_PRESETS["mace"] == "small"
    # the command line: choosing another backbone keeps the unresolved default
    import tyro

    cfg = tyro.cli(TrainConfig, default=TrainConfig(), args=["--model.backbone", "allegro"])
    assert cfg.model.backbone == "allegro" and cfg.model.preset is None
    bb = make_backbone("allegro", 4, 5.0, None, key=jax.random.PRNGKey(0), num_layers=1, n_radial=4,
                       latent_dim=8, n_tensor_features=2)  # fmt: skip
    assert type(bb).__name__ == "Allegro"
