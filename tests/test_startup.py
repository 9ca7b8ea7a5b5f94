"""Start-up: a small run imports only what it uses (no plotting, tables, scikit-learn, torchvision, or the
kernel build machinery), and the digits split it reads from its cache is scikit-learn's split."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from ticketlab.data import digits

from .conftest import ROOT

HEAVY = ("sklearn", "torchvision", "matplotlib", "pandas", "scipy", "wandb", "submitit", "torch.utils.cpp_extension")

PROBE = """
import runpy, sys, json
sys.argv = ["train.py", *json.loads(sys.argv[1])]
code = 0
try:
    runpy.run_path("train.py", run_name="__main__")
except SystemExit as e:
    code = e.code
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
"""


def _loaded_after_run(tmp_path, *overrides: str) -> dict:
    args = ["trainer.epochs=1", "logger=none", "trainer.progress=false", *overrides]
    r = subprocess.run([sys.executable, "-c", PROBE % (HEAVY,), json.dumps(args + [f"hydra.run.dir={tmp_path}"])],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_a_digits_run_imports_nothing_it_does_not_use(tmp_path):
    _loaded_after_run(tmp_path / "warm")  # fills the digits cache and builds the kernels where needed
    out = _loaded_after_run(tmp_path / "run", "pruner.sparsity=0.6")
    assert out["code"] == 0 and out["loaded"] == [], out


def test_the_cached_digits_split_is_scikit_learns(tmp_path):
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    d = load_digits()
    itr, ite = train_test_split(range(len(d.target)), test_size=0.25, random_state=0, stratify=d.target)
    for _ in range(2):  # built, then read back from the cache file
        x, y, tr, te = digits.cached_split(0.25, tmp_path)
        assert tr.tolist() == list(itr) and te.tolist() == list(ite)
        assert torch.equal(x, torch.tensor(d.images, dtype=torch.float32).unsqueeze(1) / 16.0)
        assert torch.equal(y, torch.tensor(d.target))
    assert len(list(tmp_path.glob("digits-*.pt"))) == 1


def test_a_damaged_digits_cache_is_rebuilt_with_a_warning(tmp_path, caplog):
    digits.cached_split(0.2, tmp_path)
    (cache,) = tmp_path.glob("digits-*.pt")
    cache.write_bytes(b"not a tensor file")
    with caplog.at_level("WARNING"):
        x, y, tr, te = digits.cached_split(0.2, tmp_path)
    assert "unusable" in caplog.text and len(tr) + len(te) == 1797
    assert torch.load(cache, weights_only=True)["train"].tolist() == tr.tolist()
