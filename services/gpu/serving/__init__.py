"""The inference engine: base models loaded once, adapters hot-swapped per request, tokens streamed."""
