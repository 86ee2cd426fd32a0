"""llama.cpp's own converters, taken from the llama-cpp-python source we build, at install time.

`convert_hf_to_gguf.py` (HF folder → GGUF) and `convert_lora_to_gguf.py` (PEFT adapter → GGUF
LoRA) are maintained in ggml-org/llama.cpp; they are not on PyPI, and a copy in this repository
would age. llama-cpp-python's sdist vendors the llama.cpp tree it compiles, scripts included, so
`install` (run by scripts/bootstrap.sh with the `export` extra) takes them from the very sdist pip
built the runtime from: the converter and the llama.cpp that verifies its output are one commit.
pip's cache already holds that sdist, so this is a local read, not a download, after the build.

Layout: `<venv>/share/fastbrain/llama.cpp/` with `convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`,
`conversion/` (the per-architecture classes they import), `gguf-py/` (the matching `gguf` package,
which the scripts put first on their path) and `LICENSE` (MIT); `VERSION` names the sdist.
`FASTBRAIN_LLAMA_CPP_DIR` points elsewhere (a llama.cpp checkout works too).
"""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "llama-cpp-python"
WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


class ConverterMissing(RuntimeError):
    """llama.cpp's conversion scripts are not installed here."""


def default_dir() -> Path:
    return Path(sys.prefix) / "share" / "fastbrain" / "llama.cpp"


def converter_dir() -> Path:
    """Where the conversion scripts are; raises ConverterMissing with the fix when they are not."""
    configured = os.environ.get("FASTBRAIN_LLAMA_CPP_DIR")
    directory = Path(configured) if configured else default_dir()
    if not (directory / "convert_hf_to_gguf.py").is_file():
        raise ConverterMissing(
            f"llama.cpp's convert_hf_to_gguf.py is not in {directory}: install the export extra "
            "(pip install -e '.[export]' then python -m services.gpu.exports.converter install, "
            "which scripts/bootstrap.sh does) or set FASTBRAIN_LLAMA_CPP_DIR to a llama.cpp checkout."
        )
    return directory


def runtime_version() -> str:
    """The installed llama-cpp-python's version (the sdist to take the scripts from)."""
    try:
        return importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ConverterMissing(f"{PACKAGE} is not installed: pip install -e '.[export]'") from exc


def install(target: Path | None = None, sdist: Path | None = None) -> Path:
    """Extract the scripts from llama-cpp-python's sdist (`sdist`, else pip's copy of it) into `target`."""
    target = target or default_dir()
    version = runtime_version()
    if (target / "VERSION").is_file() and (target / "VERSION").read_text().strip() == version:
        return target
    with tempfile.TemporaryDirectory(prefix="fastbrain-llama-cpp-") as tmp:
        if sdist is None:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:",
                 f"{PACKAGE}=={version}", "-d", tmp],
                check=True,
            )  # fmt: skip
            found = sorted(Path(tmp).glob("*.tar.gz"))
            if not found:
                raise ConverterMissing(f"pip found no sdist of {PACKAGE}=={version}")
            sdist = found[0]
        staging = Path(tempfile.mkdtemp(prefix=".llama.cpp-", dir=_parent(target)))
        try:
            with tarfile.open(sdist) as archive:
                for member in archive.getmembers():
                    parts = member.name.split("/vendor/llama.cpp/", 1)
                    if len(parts) != 2 or not parts[1].startswith(WANTED) or not (member.isfile() or member.isdir()):
                        continue
                    member.name = parts[1]
                    archive.extract(member, staging, filter="data")
            if not (staging / "convert_hf_to_gguf.py").is_file():
                raise ConverterMissing(f"{sdist.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
            (staging / "VERSION").write_text(f"{version}\n")
            if target.exists():
                shutil.rmtree(target)
            os.replace(staging, target)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    return target


def _parent(target: Path) -> Path:
    target.parent.mkdir(parents=True, exist_ok=True)
    return target.parent


if __name__ == "__main__":  # python -m services.gpu.exports.converter install [sdist]
    if len(sys.argv) >= 2 and sys.argv[1] == "install":
        print(install(sdist=Path(sys.argv[2]) if len(sys.argv) > 2 else None))
    else:
        print(converter_dir())
