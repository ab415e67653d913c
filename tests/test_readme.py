"""The README's promises that a test can check: its config reference and its test command."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_config_reference_matches_the_schema():
    import importlib.util

    spec = importlib.util.spec_from_file_location("config_reference", REPO / "scripts" / "config_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = (REPO / "README.md").read_text(encoding="utf-8")
    assert module.readme_with_reference(text) == text, "run: python scripts/config_reference.py --write"
    from aigc_cli import config

    sections = {cls for cls in vars(config).values() if isinstance(cls, type) and issubclass(cls, config.Section)} - {config.Section, config.ExperimentConfig}
    assert sections == {cls for _, cls in module.SECTIONS}, "add the new config section to scripts/config_reference.py SECTIONS"


def test_ci_runs_the_readme_test_command():
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    ci = (REPO / ".ci" / "run").read_text(encoding="utf-8")
    assert "python -m pytest -q" in readme and "\npython -m pytest -q\n" in ci
