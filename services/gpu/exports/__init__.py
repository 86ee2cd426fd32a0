"""Exports of a trained adapter: merged HF folder, GGUF + Ollama Modelfile, PEFT archive; each verified."""
