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
