"""Tour placeholder (replaced below)."""
import dataclasses
from experiments.schema import param, gt
@dataclasses.dataclass(frozen=True)
class Config:
  scale: float = param(1.0, "x", check=gt(0))
def run(cfg, ctx):
  return {"x": cfg.scale}
