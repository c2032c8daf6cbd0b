"""The default experiment: one training run."""

from typing import Any

from fundamentals import train
from fundamentals.config import Config


def run(config: Config, *, overwrite: bool = False, resume: bool = False
        ) -> dict[str, Any]:
  """Trains one model with the given flags; writes config, metrics and summary."""
  return train.train(config, overwrite=overwrite, resume=resume)
