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
        load_yaml_defaults(cls, path, command)  # the config checks itself when it is built


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


def _bad_configs():
    """(build an invalid config, the ConfigError it raises): single options and inconsistent ones."""
    from cameo_eqx.data.config import PrepareConfig
    from cameo_eqx.export.chemtrain_deploy import ExportConfig
    from cameo_eqx.priors.config import FitPriorsConfig, PriorConfig
    from cameo_eqx.simulate.config import AnalyzeConfig, SimulateConfig
    from cameo_eqx.synthetic.generate import SynthesizeConfig
    from cameo_eqx.training.config import DataConfig, SimValidationConfig, StageConfig, TrainConfig

    return [
        (lambda: PrepareConfig(stride=0), r"^prepare\.stride must be >= 1, got 0$"),
        (lambda: ExportConfig(platform=()), r"^export\.platform must be one or more of"),
        (lambda: PriorConfig(switch_on=12.0), r"^prior\.switch_on must be in \(0, repulsion_cutoff=10\.0\)"),
        (lambda: FitPriorsConfig(fourier_tau=0.0), r"^fit-priors\.fourier_tau must be > 0"),
        (lambda: SimulateConfig(n_steps=150, save_every=100), r"^simulate\.n_steps must be a multiple of save_every"),
        (lambda: AnalyzeConfig(discard=1.0), r"^analyze\.discard must be in \[0, 1\), got 1\.0$"),
        (lambda: SynthesizeConfig(n_random=0), r"^synthesize: nothing to simulate"),
        (lambda: DataConfig(cutoff=0.0), r"^data\.cutoff must be > 0"),
        (lambda: SimValidationConfig(n_steps=10, save_every=20), r"^sim_validation\.save_every must be in \[1, n_steps"),
        (lambda: TrainConfig(stages=(StageConfig(lr=-1.0),)), r"^train\.stages\[0\]\.lr must be > 0, got -1\.0$"),
        (lambda: TrainConfig(select_by="simulation"), r"^train\.select_by is 'simulation' but sim_validation"),
        (lambda: TrainConfig(stages=(StageConfig(name="a"), StageConfig(name="a"))), r"^train: stage names must be"),
    ]  # fmt: skip


def test_an_invalid_config_cannot_be_constructed():
    """The checks run in `__post_init__`: a config built in Python (not only one read from YAML) that is
    out of range or inconsistent is a ConfigError naming the key; `from_dict` names the file and section."""
    from cameo_eqx.config import ConfigError, from_dict
    from cameo_eqx.simulate.config import SimulateConfig
    from cameo_eqx.training.config import TrainConfig

    for build, match in _bad_configs():
        with pytest.raises(ConfigError, match=match):
            build()
    with pytest.raises(ConfigError, match=r"^x\.yaml:simulate\.n_steps must be a multiple of save_every \(100\)"):
        from_dict(SimulateConfig, {"n_steps": 150}, "x.yaml:simulate")
    with pytest.raises(ConfigError, match=r"^x\.yaml:train\.stages\[1\]\.b1 must be in \[0, 1\), got 1\.5$"):
        from_dict(TrainConfig, {"stages": [{"name": "a"}, {"name": "b", "b1": 1.5}]}, "x.yaml:train")
    with pytest.raises(ConfigError, match=r"^x\.yaml:train: no stages configured"):
        from_dict(TrainConfig, {"stages": []}, "x.yaml:train")


def test_the_command_line_rejects_an_invalid_config(capsys):
    """tyro builds the config, so `cli.py prepare --stride 0` stops with the config's message (exit 2)."""
    with pytest.raises(SystemExit) as e:
        cli.main(["prepare", "--inputs", "x.h5", "--stride", "0"])
    assert e.value.code == 2
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())  # tyro's box may wrap the line
    assert "prepare.stride must be >= 1, got 0" in err


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
    bb = make_backbone("allegro", 4, 5.0, None, key=jax.random.PRNGKey(0), n_layers=1, n_radial_basis=4,
                       latent_dim=8, n_tensor_features=2)  # fmt: skip
    assert type(bb).__name__ == "Allegro"


def test_typed_hyperparameters(tmp_path: Path, capsys):
    """`model.hyperparameters` is typed: tyro flags and YAML mappings set it, and one the chosen backbone
    lacks is an error naming the backbone and the key, raised when the config is built (before training).
    Its fields are exactly the hyperparameters (constructor keywords) of the registered backbones."""
    import dataclasses

    import tyro

    from cameo_eqx.config import ConfigError
    from cameo_eqx.modules.backbones import BACKBONES, BackboneOverrides
    from cameo_eqx.modules.radial import hyperparameter_names
    from cameo_eqx.training.config import ModelConfig, TrainConfig

    fields = {f.name for f in dataclasses.fields(BackboneOverrides)}
    assert fields == {n for cls in BACKBONES.values() for n in hyperparameter_names(cls)}
    cfg = tyro.cli(TrainConfig, default=TrainConfig(), args=["--model.hyperparameters.n-layers", "2",
                                                           "--model.hyperparameters.n-features", "16"])
    assert cfg.model.overrides() == {"n_layers": 2, "n_features": 16}
    f = tmp_path / "train.yaml"
    f.write_text("train:\n  model: {backbone: allegro, hyperparameters: {n_layers: 2, two_body_hidden: [8]}}\n")
    cfg = load_yaml_defaults(TrainConfig, f, "train")
    assert cfg.model.overrides() == {"n_layers": 2, "two_body_hidden": (8,)}
    f.write_text("train:\n  model: {backbone: painn, hyperparameters: {latent_dim: 8}}\n")
    with pytest.raises(ConfigError, match=r"backbone 'painn' has no hyperparameter\(s\) \['latent_dim'\]"):
        load_yaml_defaults(TrainConfig, f, "train")
    with pytest.raises(SystemExit):  # tyro reports the ValueError of the config and exits
        tyro.cli(TrainConfig, default=TrainConfig(), args=["--model.backbone", "allegro",
                                                           "--model.hyperparameters.n-features", "16"])
    err = " ".join(capsys.readouterr().err.replace("│", " ").split())  # tyro's box may wrap the line
    assert "backbone 'allegro' has no hyperparameter(s) ['n_features']" in err
    with pytest.raises(ConfigError, match="backbone 'none' has no hyperparameters"):
        ModelConfig(backbone="none", hyperparameters=BackboneOverrides(n_layers=2))
