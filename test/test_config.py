"""FuseConfig: defaults, config/fuse.yaml, validation messages."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from sgdfuse_ros.config import (
    ConfigError,
    FuseConfig,
    flatten,
    load_config,
    parameter_specs,
)
from sgdfuse_ros.parameter_docs import render_parameter_table, render_parameter_yaml

REPO = Path(__file__).resolve().parents[1]
FUSE_YAML = REPO / "config" / "fuse.yaml"


def test_defaults_are_valid_and_every_parameter_is_documented():
    FuseConfig().validate()
    specs = parameter_specs()
    assert len({s.name for s in specs}) == len(specs)
    for spec in specs:
        assert len(spec.description) > 15, spec.name
        assert spec.name.count(".") == 1


def test_fuse_yaml_holds_every_parameter_with_its_default_and_a_comment():
    document = yaml.safe_load(FUSE_YAML.read_text())
    flat = flatten(document["/**"]["ros__parameters"])
    assert set(flat) == {s.name for s in parameter_specs()}
    assert load_config(FUSE_YAML) == FuseConfig()
    lines = FUSE_YAML.read_text().splitlines()
    for index, line in enumerate(lines):
        stripped = line.strip()
        if line.startswith("      ") and not stripped.startswith("#"):
            assert lines[index - 1].strip().startswith("#"), f"parameter without a comment: {stripped}"
    # The file is the rendering of the specs, so descriptions cannot drift from the code.
    assert yaml.safe_load(render_parameter_yaml()) == document


@pytest.mark.parametrize(
    ("key", "value", "expected"),
    [
        ("thermal.scaling", "minmax", "allowed: 'fixed', 'tracked'"),
        ("node.sync_slop", -0.1, "in [0.0, 10.0]"),
        ("node.sync_queue_size", 2.5, "allowed: int"),
        ("compute.device", "gpu", "'cpu', 'cuda' or 'cuda:N'"),
        ("registration.homography", [1, 0, 0], "a list of 9 finite numbers"),
        ("thermal.counts_max", 20000, "greater than thermal.counts_min"),
        ("prior.kind", "sam", "must name a checkpoint file"),
        ("no.such_key", 1, "unknown parameter"),
    ],
)
def test_invalid_values_name_key_value_and_what_is_allowed(key, value, expected):
    with pytest.raises(ConfigError) as info:
        FuseConfig().updated({key: value})
    message = str(info.value)
    assert key in message or (key == "prior.kind" and "prior.sam_checkpoint" in message)
    assert expected in message


def test_singular_homography_is_rejected():
    with pytest.raises(ConfigError, match="invertible"):
        FuseConfig().updated({"registration.homography": [0.0] * 9})


def test_overrides_from_yaml_file_and_dict(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("fusion_node:\n  ros__parameters:\n    thermal: {counts_min: 1000, counts_max: 5000}\n")
    config = load_config(path, {"compute.torch_threads": 2})
    assert config.thermal.counts_min == 1000.0 and config.thermal.counts_max == 5000.0
    assert config.compute.torch_threads == 2
    assert FuseConfig().thermal.counts_min == 27000.0  # defaults untouched


def test_missing_config_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


def test_package_resources_are_found_and_missing_ones_say_where_they_were_looked_for():
    from sgdfuse_ros.config import default_config_path
    from sgdfuse_ros.resources import find_resource

    assert load_config(default_config_path()) == FuseConfig()
    assert (find_resource("samples/pairs") / "ir").is_dir()
    assert find_resource("msg/FusionStats.msg").is_file()
    with pytest.raises(FileNotFoundError, match="looked in: .*nothing/here"):
        find_resource("nothing/here")


def test_readme_parameter_table_is_the_rendering_of_the_specs():
    readme = (REPO / "README.md").read_text()
    begin = readme.index("<!-- parameter table")
    table = readme[readme.index("\n", begin) + 1 : readme.index("<!-- end of parameter table -->")]
    assert table == render_parameter_table()
    for spec in parameter_specs():
        assert f"`{spec.name}`" in table
