"""``armor-lm-eval``: lm-evaluation-harness's own command line with the ``armor_jax`` model
registered (lm-eval finds no model plugins by itself).

    armor-lm-eval run --model armor_jax --model_args pretrained=PATH --tasks arc_easy
    armor-lm-eval run --model armor_jax --model_args pretrained=smollm2 --batch_size 16 \\
        --tasks mytask --include_path DIR

Every argument goes to lm-eval's parser unchanged (``armor-lm-eval --help`` is its help).
"""

from __future__ import annotations


def main() -> None:
  from lm_eval.__main__ import cli_evaluate  # pylint: disable=import-outside-toplevel
  from armor_jax.evaluation import lm_backend  # pylint: disable=import-outside-toplevel
  lm_backend.register()
  cli_evaluate()


if __name__ == "__main__":
  main()
