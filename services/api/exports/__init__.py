"""Exports of adapters: verified merged, GGUF and PEFT copies as jobs."""
