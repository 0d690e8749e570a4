"""Atomic writes and resume bookkeeping."""
import json

import numpy as np
import pytest

from experiments import io


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch):
  path = tmp_path / "results.json"
  io.write_json(path, {"complete": True, "x": 1})
  def boom(*a, **k):
    raise RuntimeError("killed mid-write")
  monkeypatch.setattr(io.json, "dumps", boom)
  with pytest.raises(RuntimeError):
    io.write_json(path, {"complete": True, "x": 2})
  assert json.loads(path.read_text()) == {"complete": True, "x": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_complete_results_and_hash(tmp_path):
  assert io.read_complete_results(tmp_path) is None
  (tmp_path / io.RESULTS).write_text('{"complete": tru')  # truncated
  assert io.read_complete_results(tmp_path) is None
  io.write_json(tmp_path / io.RESULTS, {"complete": True, "v": np.float32(1.5), "a": np.arange(3)})
  assert io.read_complete_results(tmp_path)["a"] == [0, 1, 2]
  base = {"seed": 0, "horizon": 10, "resume": True, "progress": True, "logger": {"mode": "x"}}
  same = dict(base, resume=False, progress=False, logger={"mode": "online"})
  assert io.config_hash(base) == io.config_hash(same)
  assert io.config_hash(base) != io.config_hash(dict(base, horizon=11))


def test_write_csv_rejects_ragged_columns(tmp_path):
  io.write_csv(tmp_path / "m.csv", {"a": [1, 2], "b": [3.0, 4.0]})
  assert (tmp_path / "m.csv").read_text().splitlines() == ["a,b", "1,3.0", "2,4.0"]
  with pytest.raises(ValueError):
    io.write_csv(tmp_path / "n.csv", {"a": [1, 2], "b": [3.0]})


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_umask_mode(tmp_path, umask):
  import os
  import stat
  old = os.umask(umask)
  try:
    io.write_json(tmp_path / "r.json", {"a": 1})
    io.write_csv(tmp_path / "m.csv", {"a": [1]})
    plt = io.pyplot()
    io.save_figure(plt.figure(), tmp_path / "f.png")
    (tmp_path / "plain").write_text("x")          # what open() gives a new file
  finally:
    os.umask(old)
  want = 0o666 & ~umask
  assert stat.S_IMODE((tmp_path / "plain").stat().st_mode) == want
  for name in ("r.json", "m.csv", "f.png"):
    assert stat.S_IMODE((tmp_path / name).stat().st_mode) == want, name
