"""Shared test settings: deterministic, small, quiet, and Ray with token authentication (one token per
test session, in a private temp dir; subprocesses inherit it through RAY_AUTH_TOKEN_PATH), artifacts
sealed with a per-session key (BIDL_ARTIFACT_KEY_FILE)."""
import atexit
import os
import shutil
import tempfile

import torch

from bidl_runtime.cluster import secure_env

os.environ.setdefault("RAY_DEDUP_LOGS", "0")
secure_env()
if "BIDL_ARTIFACT_KEY_FILE" not in os.environ and "BIDL_ARTIFACT_KEY" not in os.environ:
    _keys = tempfile.mkdtemp(prefix="bidl-test-artifact-key-")   # artifacts sealed with a session key,
    atexit.register(shutil.rmtree, _keys, True)                  # not the user's ~/.config/bidl one
    os.environ["BIDL_ARTIFACT_KEY_FILE"] = os.path.join(_keys, "artifact.key")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
