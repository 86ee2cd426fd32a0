"""Fast Brain's processes: the API, the worker and the GPU side."""
