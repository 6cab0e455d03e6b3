"""Offline `evaluate` for the metric-module tests."""

import socket

import pytest


@pytest.fixture(scope="session")
def evaluate_home(tmp_path_factory):
    """One HF_HOME for every module here: evaluate puts the first modules cache on sys.path and imports
    `evaluate_modules` from it, so a second cache directory would not be found."""
    return tmp_path_factory.mktemp("hf_home")


@pytest.fixture(scope="module")
def offline_evaluate(evaluate_home):
    """Offline env, ``evaluate_home`` as HF_HOME and no sockets, for the tests of one module.

    `evaluate.config` reads HF_HOME once at import, so its cache paths are patched as well.
    """
    evaluate = pytest.importorskip("evaluate")
    with pytest.MonkeyPatch.context() as patch:
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE", "HF_EVALUATE_OFFLINE"):
            patch.setenv(name, "1")
        patch.setenv("HF_HOME", str(evaluate_home))
        patch.setattr(evaluate.config, "HF_MODULES_CACHE", evaluate_home / "modules")
        patch.setattr(evaluate.config, "HF_METRICS_CACHE", evaluate_home / "metrics")
        patch.setattr(evaluate.config, "HF_EVALUATE_CACHE", evaluate_home / "evaluate")

        def no_network(*args, **kwargs):
            raise OSError("network access in an offline test")

        patch.setattr(socket.socket, "connect", no_network)
        yield evaluate_home
