"""Safe files: nothing is unpickled, every download is verified by SHA-256, nothing touches the network at import.

These scan the source, so a regression anywhere in ``src/padnet`` fails here.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from padnet.errors import DataError
from padnet.training.data.download import download, sha256_file

SRC = Path(__file__).resolve().parents[2] / "src"
FILES = sorted((SRC / "padnet").rglob("*.py"))
PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "joblib", "shelve", "marshal"}


def _trees():
    for path in FILES:
        yield path.relative_to(SRC), ast.parse(path.read_text(), filename=str(path))


def _calls(tree, name: str):
    """Calls whose function is ``name`` or ``<anything>.name``."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            if (isinstance(func, ast.Name) and func.id == name) or (
                isinstance(func, ast.Attribute) and func.attr == name
            ):
                yield node


def _keyword(call: ast.Call, name: str):
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_the_scan_sees_the_whole_package():
    assert len(FILES) > 40 and any(p.name == "checkpoint.py" for p in FILES)


def test_no_module_imports_a_pickle_library():
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            names = (
                [a.name for a in node.names]
                if isinstance(node, ast.Import)
                else [node.module or ""]
                if isinstance(node, ast.ImportFrom)
                else []
            )
            found += [f"{path}: {n}" for n in names if n.split(".")[0] in PICKLE_MODULES]
    assert found == []


def test_torch_load_only_with_weights_only_and_numpy_load_never_with_pickles():
    found = []
    for path, tree in _trees():
        for call in _calls(tree, "load"):
            weights_only = _keyword(call, "weights_only")
            allow_pickle = _keyword(call, "allow_pickle")
            text = ast.unparse(call.func)
            if text.endswith("torch.load") and not (
                isinstance(weights_only, ast.Constant) and weights_only.value is True
            ):
                found.append(f"{path}:{call.lineno} {ast.unparse(call)}")
            if isinstance(allow_pickle, ast.Constant) and allow_pickle.value is True:
                found.append(f"{path}:{call.lineno} {ast.unparse(call)}")
        for name in ("read_pickle", "unpickle", "Unpickler"):
            found += [f"{path}:{c.lineno} {ast.unparse(c)}" for c in _calls(tree, name)]
    assert found == []


def test_pretrained_models_are_read_from_safetensors_only():
    calls = [
        (path, c)
        for path, tree in _trees()
        for c in _calls(tree, "from_pretrained")
        if "Model" in ast.unparse(c.func)
    ]
    assert calls, "the scan should find the model loading"
    for path, call in calls:
        flag = _keyword(call, "use_safetensors")
        assert isinstance(flag, ast.Constant) and flag.value is True, f"{path}:{call.lineno}"


def test_only_the_download_module_opens_urls_and_every_download_passes_a_sha256():
    openers = {"urlopen", "urlretrieve", "Request", "HTTPConnection", "HTTPSConnection", "create_connection"}
    for path, tree in _trees():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                modules = (
                    [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                )
                assert not any(m.split(".")[0] in ("requests", "httpx", "aiohttp") for m in modules), path
        used = {
            c.func.attr if isinstance(c.func, ast.Attribute) else c.func.id
            for name in openers
            for c in _calls(tree, name)
        }
        assert not used or str(path) == "padnet/training/data/download.py", (path, used)
        for name in ("download", "_download"):
            for call in _calls(tree, name):
                assert len(call.args) >= 3 or _keyword(call, "sha256") is not None, f"{path}:{call.lineno}"


def test_a_download_with_the_wrong_sha256_is_discarded(tmp_path):
    source = tmp_path / "source.bin"
    source.write_bytes(b"padnet" * 100)
    dest = tmp_path / "out" / "data.bin"
    with pytest.raises(DataError, match="SHA-256 mismatch .* the download was discarded"):
        download(source.as_uri(), dest, "0" * 64, progress=False)
    assert not dest.exists() and list(dest.parent.iterdir()) == []
    assert download(source.as_uri(), dest, sha256_file(source), progress=False) == dest


NO_NETWORK = """
import importlib, pkgutil, socket, sys
def refuse(*args, **kwargs):
    raise OSError("network use at import time")
socket.socket.connect = refuse
socket.create_connection = refuse
socket.getaddrinfo = refuse
import padnet
modules = [m.name for m in pkgutil.walk_packages(padnet.__path__, "padnet.") if m.name != "padnet.__main__"]
for name in modules:
    importlib.import_module(name)
from padnet.cli import main
try:
    main(["--help"])
except SystemExit as exc:
    assert exc.code == 0
print("imported", len(modules))
"""


@pytest.mark.slow
def test_nothing_touches_the_network_at_import_time():
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}  # transformers must not need it
    env["PYTHONPATH"] = str(SRC)
    proc = subprocess.run(
        [sys.executable, "-c", NO_NETWORK], env=env, capture_output=True, text=True, timeout=300, check=False
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert int(proc.stdout.split()[-1]) > 40
