"""The Modal app's definition, read back from Modal's own objects (no account, nothing deployed),
the mapping of Modal's real exception classes into the error taxonomy, and backend selection."""

from __future__ import annotations

import inspect
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from modal import exception as modal_exc
from packaging.requirements import Requirement

from services.gpu import modal_app
from services.worker.backends import create_backend
from services.worker.backends.modal import ModalBackend, modal_error_category, modal_error_payload
from shared.errors import ErrorCategory
from shared.settings import MODAL_GPU_PRICES_PER_HOUR, Settings

REPO = Path(__file__).resolve().parents[2]


def _service_function() -> object:
    return modal_app.SkillTrainer._get_class_service_function()


def test_gpu_volume_secret_timeout_and_retries() -> None:
    spec = _service_function()._spec_  # type: ignore[attr-defined]
    assert spec.gpus == "A10G"
    assert set(spec.volumes) == {"/adapters"}
    assert "hive215-adapters" in repr(spec.volumes["/adapters"])
    assert [repr(s) for s in spec.secrets] == ["modal.Secret.from_name('huggingface')"]
    options = modal_app.TRAINER_OPTIONS
    assert options["timeout"] == Settings().modal_timeout_seconds == 6 * 3600
    assert options["retries"] == 0, "Modal-side retries are off: the worker owns recovery"
    assert options["volumes"] == {"/adapters": modal_app.volume} and options["image"] is modal_app.image
    assert modal_app.app.name == "fastbrain-trainer"


def test_deploy_time_config_matches_the_settings_defaults() -> None:
    defaults = Settings()
    for name in ("modal_app_name", "modal_gpu", "modal_volume", "modal_secret", "modal_timeout_seconds"):
        assert getattr(modal_app.ModalConfig(), name) == getattr(defaults, name), name


def test_gpu_type_comes_from_configuration() -> None:
    code = (
        "from services.gpu import modal_app as m; "
        "print(m.SkillTrainer._get_class_service_function()._spec_.gpus, m.TRAINER_OPTIONS['timeout'])"
    )
    env = {"FASTBRAIN_MODAL_GPU": "H100", "FASTBRAIN_MODAL_TIMEOUT_SECONDS": "3600", "PATH": "/usr/bin:/bin"}
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["H100", "3600"]


def test_image_pins_the_local_training_libraries_plus_unsloth() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = {Requirement(r).name: Requirement(r) for r in pyproject["project"]["dependencies"]}
    pinned = [Requirement(p) for p in modal_app.TRAINING_PACKAGES]
    assert {r.name for r in pinned} == {"torch", "transformers", "peft", "trl", "datasets", "accelerate"}
    for requirement in pinned:
        (version,) = [s.version for s in requirement.specifier]
        assert declared[requirement.name].specifier.contains(version), f"{requirement} outside {declared}"
    assert {Requirement(p).name for p in modal_app.GPU_PACKAGES} == {"unsloth", "bitsandbytes"}
    assert "unsloth" in pyproject["project"]["optional-dependencies"]["gpu"]
    assert "unsloth" not in str(pyproject["project"]["dependencies"])


def test_trainer_class_methods() -> None:
    user_cls = modal_app.SkillTrainer._get_user_cls()  # type: ignore[attr-defined]
    for name in ("train", "chat"):
        assert inspect.isgeneratorfunction(inspect.unwrap(getattr(user_cls, name)._get_raw_f()))
    for name in ("list_adapters", "delete_adapter"):
        assert not inspect.isgeneratorfunction(inspect.unwrap(getattr(user_cls, name)._get_raw_f()))
    assert set(modal_app.SkillTrainer._get_method_names()) >= {  # type: ignore[attr-defined]
        "train",
        "chat",
        "list_adapters",
        "delete_adapter",
    }


@pytest.mark.parametrize(
    ("exc", "category"),
    [
        (modal_exc.ResourceExhaustedError("no GPU capacity for A10G"), ErrorCategory.GPU_UNAVAILABLE),
        (modal_exc.ConnectionError("could not connect to api.modal.com"), ErrorCategory.NETWORK_ERROR),
        (modal_exc.ServiceError("stream terminated"), ErrorCategory.NETWORK_ERROR),
        (modal_exc.InternalFailure("retriable"), ErrorCategory.NETWORK_ERROR),
        (modal_exc.FunctionTimeoutError("Function timed out after 21600s"), ErrorCategory.TIMEOUT),
        (modal_exc.InputCancellation("cancelled"), ErrorCategory.CANCELLED),
        (modal_exc.ExecutionError("something odd"), ErrorCategory.INTERNAL),
    ],
)
def test_modal_exceptions_map_into_the_taxonomy(exc: BaseException, category: ErrorCategory) -> None:
    assert modal_error_category(exc) is category
    payload = modal_error_payload(exc)
    assert payload["type"] == "error" and payload["category"] == category.value
    assert payload["message"].startswith("Modal: ") and payload["suggestions"]


def test_not_deployed_says_how_to_deploy() -> None:
    payload = modal_error_payload(modal_exc.NotFoundError("Lookup failed for Cls 'SkillTrainer'"))
    assert "modal deploy services/gpu/modal_app.py" in payload["message"]


def test_backend_selection_and_billing(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, gpu_backend="modal")
    backend = create_backend(settings)
    assert isinstance(backend, ModalBackend) and backend.name == "modal" and backend.device == "modal:A10G"
    assert create_backend(Settings(data_dir=tmp_path)).name == "local"
    assert settings.modal_price_per_hour == MODAL_GPU_PRICES_PER_HOUR["A10G"] == 1.10
    billed = backend._charges({"type": "complete", "gpu_seconds": 1800.0})
    assert billed["cost_usd"] == pytest.approx(0.55) and billed["price_per_hour"] == 1.10
    assert billed["gpu"] == "A10G" and billed["gpu_seconds"] == 1800.0
    t4 = Settings(data_dir=tmp_path, modal_gpu="T4")
    assert t4.modal_price_per_hour == 0.40
