"""The README holds on a fresh machine: its install command keeps torch on the CPU build the way the
Dockerfile does, and its worked example is what the command it shows prints."""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _load_generator():
    spec = importlib.util.spec_from_file_location("readme_example", ROOT / "tools" / "readme_example.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


readme_example = _load_generator()


def _dockerfile_torch_index() -> str:
    match = re.search(r"^ARG TORCH_INDEX=(\S+)$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "Dockerfile no longer names the CPU wheel index in ARG TORCH_INDEX"
    return match.group(1)


def _pip_installs(text: str) -> list[list[str]]:
    """Every `pip install ...` command in ``text`` (shell-split, up to the next && or line end)."""
    commands = []
    for line in text.splitlines():
        for part in line.split("&&"):
            words = shlex.split(part.strip().rstrip("\\"), comments=True) if "pip" in part else []
            if "install" in words and any(w.endswith("pip") for w in words[: words.index("install")]):
                commands.append(words)
    return commands


def _quick_start_block() -> str:
    """The first shell block of the README's quick start (the install-and-run command)."""
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quick start") :]
    start = section.index("```bash\n") + len("```bash\n")
    return section[start : section.index("```", start)]


def test_readme_install_uses_the_dockerfile_cpu_index_and_constraints():
    index = _dockerfile_torch_index()
    installs = _pip_installs(_quick_start_block())
    assert installs, "the quick start no longer shows a pip install command"
    for words in installs:
        assert "--extra-index-url" in words and words[words.index("--extra-index-url") + 1] == index, words
        assert "-c" in words and words[words.index("-c") + 1] == "constraints.txt", words


def test_install_script_uses_the_same_cpu_index():
    script = (ROOT / "tools" / "install-test-deps.sh").read_text()
    assert f'TORCH_INDEX="${{TORCH_INDEX:-{_dockerfile_torch_index()}}}"' in script
    for words in _pip_installs(script):
        assert "--extra-index-url" in words and "-c" in words, words


def test_pip_install_parser_sees_a_missing_index():
    """The check above must be able to fail: a command without the index is reported."""
    (words,) = _pip_installs('pip install -c constraints.txt ".[tflite]" && edgeprune compress --example lenet5')
    assert "--extra-index-url" not in words


def test_constraints_pin_torch_exactly():
    pins = [line for line in (ROOT / "constraints.txt").read_text().splitlines() if line.startswith("torch")]
    assert len(pins) == 1 and re.fullmatch(r"torch==\d+\.\d+\.\d+", pins[0])


def test_readme_has_one_generated_example_block():
    text = (ROOT / "README.md").read_text()
    assert text.count(readme_example.BEGIN) == 1 and text.count(readme_example.END) == 1
    block = readme_example.readme_block(text)
    assert "$ edgeprune compress --example lenet5 -o out/" in block
    rows = readme_example.parse_table(readme_example.main_table(block.split("\n", 1)[1]))
    assert [r["stage"] for r in rows][:1] == ["load"]


def test_table_comparison_flags_a_changed_count_and_tolerates_timings():
    header = ["| stage | params | accuracy | time |", "|---|---:|---:|---:|"]
    old = readme_example.parse_table([*header, "| load | 1,000 | 98.33 % | 2.7 s |"])
    same = readme_example.parse_table([*header, "| load | 1,000 | 98.06 % | 9.9 s |"])
    assert readme_example.TIMING_COLUMNS.search("params") is None
    changed = readme_example.parse_table([*header, "| load | 1,001 | 98.33 % | 2.7 s |"])
    far = readme_example.parse_table([*header, "| load | 1,000 | 97.00 % | 2.7 s |"])
    assert readme_example.compare_tables(old, same, samples=359) == []  # 0.27 points = one sample of 359
    assert readme_example.compare_tables(old, changed, samples=359) == ["load: params is '1,001', README says '1,000'"]
    assert len(readme_example.compare_tables(old, far, samples=359)) == 1


def test_a_run_that_pruned_to_another_model_is_held_to_the_other_cpu_bands():
    """Another CPU prunes the example to another model: within the bands the table still agrees (the
    AMD EPYC README against an Intel Xeon run), a stage that stopped working does not."""
    header = ["| stage | non-zero | file | accuracy |", "|---|---:|---:|---:|"]
    readme = readme_example.parse_table(
        [*header, "| prune | 41,283 | 476.3 KiB | 98.33 % |", "| quantize | - | 5.7 KiB | 97.77 % |"]
    )
    other_cpu = readme_example.parse_table(
        [*header, "| prune | 40,463 | 476.3 KiB | 98.05 % |", "| quantize | - | 8.1 KiB | 98.05 % |"]
    )
    assert readme_example.compare_tables(readme, other_cpu, samples=359) == []
    nothing_pruned = readme_example.parse_table(
        [*header, "| prune | 114,760 | 476.3 KiB | 98.33 % |", "| quantize | - | 5.7 KiB | 97.77 % |"]
    )
    collapsed = readme_example.parse_table(
        [*header, "| prune | 40,463 | 476.3 KiB | 90.25 % |", "| quantize | - | 5.7 KiB | 90.25 % |"]
    )
    assert readme_example.compare_tables(readme, nothing_pruned, samples=359) == [
        "prune: non-zero is '114,760', README says '41,283'"
    ]
    assert len(readme_example.compare_tables(readme, collapsed, samples=359)) == 2


@pytest.mark.slow
def test_readme_worked_example_is_what_the_command_prints(tmp_path):
    """Rerun `edgeprune compress --example lenet5 -o out/`; its table must be the README's."""
    run = readme_example.run_example(tmp_path)
    block = readme_example.readme_block((ROOT / "README.md").read_text())
    documented = readme_example.parse_table(readme_example.main_table(block.split("\n", 1)[1]))
    fresh = readme_example.parse_table(readme_example.main_table(run.report_md))
    problems = readme_example.compare_tables(documented, fresh, readme_example.test_samples(run.report))
    assert not problems, "README is stale; run python3 tools/readme_example.py:\n" + "\n".join(problems)
    # the printed summary lists the same stages, in the same order (its numbers are the table's)
    shown = block.split("```text\n", 1)[1].split("```", 1)[0].splitlines()[1:]

    def stage_names(lines: list[str]) -> list[str]:
        return [line.split()[0] for line in lines if line.startswith("  ")]

    assert stage_names(shown) == stage_names(run.stdout.splitlines())
