"""GPU side: model catalog and loading, training, inference. Ships to Modal with shared.schemas/errors."""
