"""Every `python -m procrop_jax...` command in the READMEs and the configs' docstrings runs as
written: its module exists, its flags are defined, its --config file loads and every
--config.FIELD=VALUE override names a field of that config and parses (nothing is run)."""

import ast
import importlib
import importlib.util
import re
import shlex

from absl import flags
from ml_collections import config_flags
import pytest

from tests.conftest import REPO_ROOT

DOCUMENTS = ["README.md", "data/README.md"] + [
    f"configs/{p.name}" for p in sorted((REPO_ROOT / "configs").glob("*.py"))]
# Usage lines, not commands: placeholders for a config name or optional arguments.
PLACEHOLDERS = ("configs/NAME.py", "[")
# `tfds build`'s own flags (procrop_jax.datasets registers the builders and hands over).
NOT_CHECKED = ("procrop_jax.datasets",)


def _text(document: str) -> str:
  source = (REPO_ROOT / document).read_text()
  if document.endswith(".py"):
    return ast.get_docstring(ast.parse(source)) or ""
  return source


def _commands_in(shell: str):
  """(module, args) of each `python -m procrop_jax...` in one line of shell."""
  try:
    tokens = shlex.split(shell)
  except ValueError:  # Prose with an apostrophe, not a command.
    return
  for i, token in enumerate(tokens):
    if "python -m procrop_jax" in token and "=" in token:  # gcloud ... --command="...".
      yield from _commands_in(token.split("=", 1)[1])
    if (token in ("python", "python3") and tokens[i + 1:i + 2] == ["-m"]
        and tokens[i + 2:i + 3] and tokens[i + 2].startswith("procrop_jax")):
      args = []
      for arg in tokens[i + 3:]:
        if arg in ("&&", "||", ";", "|", "--"):  # After "--": another program's flags (Beam's).
          break
        args.append(arg)
      yield tokens[i + 2], args


def documented_commands() -> list[tuple[str, str, list[str]]]:
  found = []
  for document in DOCUMENTS:
    text = re.sub(r"\\\n\s*", " ", _text(document))  # Continued lines.
    for line in text.splitlines():
      spans = line.split("`")[1::2] if "`" in line else [line]  # Inline code in prose.
      for span in spans:
        for module, args in _commands_in(span):
          if not any(p in arg for arg in args for p in PLACEHOLDERS):
            found.append((document, module, args))
  return found


COMMANDS = documented_commands()


def _defined_flags(module: str) -> set[str]:
  """Flag names the module defines with absl (also under `if __name__ == "__main__":`), and
  those of a module whose `define_flags()` it calls (generate_beam shares generate's)."""
  source = pathlib_of(module).read_text()
  defined = set(re.findall(r"DEFINE_\w+\(\s*\"(\w+)\"", source))
  imported = dict((alias, f"{package}.{alias}") for package, alias
                  in re.findall(r"^from ([\w.]+) import (\w+)", source, re.MULTILINE))
  for alias in re.findall(r"(\w+)\.define_flags\(\)", source):
    defined |= _defined_flags(imported[alias])
  return defined


def pathlib_of(module: str):
  return __import__("pathlib").Path(importlib.util.find_spec(module).origin)


def _main_modes() -> list[str]:
  """main.MODES's keys, read from the source: importing main would define its absl flags on
  the global FLAGS, which fails in a process where another module (crop_regions) already
  defined --config."""
  tree = ast.parse(pathlib_of("procrop_jax.main").read_text())
  for node in tree.body:
    names = [getattr(t, "id", "") for t in getattr(node, "targets", ())]
    if isinstance(node, ast.Assign) and "MODES" in names:
      return [ast.literal_eval(k) for k in node.value.keys]
  raise AssertionError("procrop_jax/main.py has no MODES")


def _flag_name(arg: str) -> str:
  return arg[2:].split("=", 1)[0]


def test_the_documents_hold_the_commands_they_should():
  modules = {m for _, m, _ in COMMANDS}
  assert {"procrop_jax.main", "procrop_jax.datasets.prepare"} <= modules
  documents = {d for d, _, _ in COMMANDS}
  for name in ("fcdb_gpu8", "fcdb_gpu_multihost", "fcdb_tpu_v5e", "default", "testing"):
    assert f"configs/{name}.py" in documents
  # The gcloud --command="..." and the env-prefixed launch lines are found too.
  readme = [a for d, _, a in COMMANDS if d == "README.md"]
  assert any("--config=configs/fcdb_tpu_v5e.py" in a for a in readme)
  assert any("--config=configs/fcdb_gpu_multihost.py" in a for a in readme)


@pytest.mark.parametrize("document, module, args", COMMANDS,
                         ids=[f"{d}:{' '.join(a)[:60]}" for d, _, a in COMMANDS])
def test_documented_command_is_valid(document, module, args, monkeypatch):
  del document
  assert importlib.util.find_spec(module) is not None, f"no module {module}"
  if module in NOT_CHECKED or not args:
    return
  monkeypatch.chdir(REPO_ROOT)  # Commands run from the repository root.
  if module == "procrop_jax.crop":
    importlib.import_module(module).build_parser().parse_args(args)
    return
  defined = _defined_flags(module)
  for arg in args:
    assert arg.startswith("--"), f"{module} takes flags only, got {arg!r}"
    name = _flag_name(arg)
    assert name in defined or (name.startswith("config.") and "config" in defined), (
        f"{module} has no flag --{name} (it defines {sorted(defined)})")
  if "config" in defined:  # Load the config and apply the overrides, as the command would.
    kept = ["prog"] + [a for a in args
                       if _flag_name(a).split(".")[0] in ("config", "workdir", "mode")]
    values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=values, lock_config=True,
                                    sys_argv=kept)
    if module == "procrop_jax.main":
      flags.DEFINE_string("workdir", None, "", flag_values=values)
      flags.DEFINE_enum("mode", "train", _main_modes(), "", flag_values=values)
      assert any(_flag_name(a) == "workdir" for a in args), "main needs --workdir"
    values(kept)
    assert values.config is not None
