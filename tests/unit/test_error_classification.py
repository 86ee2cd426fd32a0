"""Classification on real exception objects: type first, message second."""

from __future__ import annotations

import json
import socket

import pytest
import torch

from shared.errors import CATALOGUE, DataFormatError, ErrorCategory, Severity, classify, describe


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: nothing listens there


def test_torch_out_of_memory_is_cuda_oom() -> None:
    error = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    assert classify(error) == ErrorCategory.CUDA_OOM
    assert describe(error)["severity"] == Severity.RECOVERABLE.value


def test_real_connection_refused_is_network_error() -> None:
    with pytest.raises(ConnectionRefusedError) as info:
        socket.create_connection(("127.0.0.1", _closed_port()), timeout=2)
    assert classify(info.value) == ErrorCategory.NETWORK_ERROR


def test_wrapped_errors_are_classified_by_their_cause() -> None:
    try:
        try:
            socket.create_connection(("127.0.0.1", _closed_port()), timeout=2)
        except OSError as exc:
            raise RuntimeError("could not fetch the base model") from exc
    except RuntimeError as outer:
        assert classify(outer) == ErrorCategory.NETWORK_ERROR


def test_data_errors() -> None:
    with pytest.raises(json.JSONDecodeError) as bad_json:
        json.loads('{"user": "hi",')
    assert classify(bad_json.value) == ErrorCategory.DATA_FORMAT_ERROR
    with pytest.raises(UnicodeDecodeError) as bad_utf8:
        b"\xff\xfe\xfa".decode("utf-8")
    assert classify(bad_utf8.value) == ErrorCategory.DATA_FORMAT_ERROR
    assert classify(DataFormatError("invalid format: empty conversation")) == ErrorCategory.DATA_FORMAT_ERROR


def test_tokenizer_error_on_real_tokenizer() -> None:
    from transformers import AutoTokenizer

    from services.gpu.models import ensure_model
    from tests.conftest import CACHE

    path = ensure_model("tiny-random", CACHE / "test-models")
    tokenizer = AutoTokenizer.from_pretrained(path)
    with pytest.raises(ValueError) as info:  # a turn that is not text
        tokenizer(12345)
    assert classify(info.value) == ErrorCategory.DATA_FORMAT_ERROR


def test_message_patterns_when_the_type_says_nothing() -> None:
    assert classify(RuntimeError("No CUDA GPUs are available")) == ErrorCategory.GPU_UNAVAILABLE
    assert classify(RuntimeError("Failed to load model weights")) == ErrorCategory.MODEL_LOAD_FAIL
    assert classify(TimeoutError("read timed out")) == ErrorCategory.TIMEOUT


def test_unknown_errors_are_internal_with_the_real_message() -> None:
    error = ZeroDivisionError("division by zero in step 3")
    described = describe(error)
    assert described["category"] == ErrorCategory.INTERNAL.value
    assert "division by zero in step 3" in str(described["message"])
    assert "ZeroDivisionError" in str(described["traceback_tail"]) or described["exception_type"] == "ZeroDivisionError"


def test_catalogue_is_complete() -> None:
    for category in ErrorCategory:
        info = CATALOGUE[category]
        assert info.user_message and info.suggestions
