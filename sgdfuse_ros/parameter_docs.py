"""The parameter file and the README's parameter table, generated from :mod:`sgdfuse_ros.config`.

    python -m sgdfuse_ros.parameter_docs > config/fuse.yaml
    python -m sgdfuse_ros.parameter_docs --markdown      # the README table (test/test_config.py keeps it in sync)
"""

from __future__ import annotations

from .config import parameter_specs

__all__ = ["render_parameter_table", "render_parameter_yaml"]


def render_parameter_yaml() -> str:
    """config/fuse.yaml: every parameter with its default, description, allowed values and run-time status."""
    import textwrap

    import yaml

    lines = [
        "# sgdfuse_ros parameters (ROS 2 parameter file; also read by the library and the CLI).",
        "# Generated from sgdfuse_ros/config.py (python -m sgdfuse_ros.parameter_docs > config/fuse.yaml); edit",
        "# freely.",
        "# '/**' applies to the node whatever its name or namespace.",
        "/**:",
        "  ros__parameters:",
    ]
    section = None
    for spec in parameter_specs():
        name_section, key = spec.name.split(".", 1)
        if name_section != section:
            section = name_section
            lines.append(f"    {section}:")
        status = "read-only" if spec.read_only else "changeable at run time"
        note = f"{spec.description} [{spec.allowed()}; {status}]"
        lines.extend(textwrap.wrap(note, width=100, initial_indent="      # ", subsequent_indent="      # "))
        lines.append(
            f"      {key}: {yaml.safe_dump(spec.default, default_flow_style=True).strip().removesuffix('...').strip()}"
        )
    return "\n".join(lines) + "\n"


def render_parameter_table() -> str:
    """Markdown table of every parameter (README): name, default, allowed values, run-time status, meaning."""
    import yaml

    rows = ["| parameter | default | allowed | run time | meaning |", "|---|---|---|---|---|"]
    for spec in parameter_specs():
        default = yaml.safe_dump(spec.default, default_flow_style=True).strip().removesuffix("...").strip()
        allowed = spec.allowed().removeprefix("allowed: ")
        status = "read-only" if spec.read_only else "changeable"
        rows.append(f"| `{spec.name}` | `{default}` | {allowed} | {status} | {spec.description} |")
    return "\n".join(rows) + "\n"


if __name__ == "__main__":
    import sys

    print(render_parameter_table() if "--markdown" in sys.argv else render_parameter_yaml(), end="")
