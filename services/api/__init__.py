"""The HTTP + WebSocket API (FastAPI). Never imports torch, transformers, peft or trl."""
