"""Fast Brain's shared package: settings, database, schemas, errors and events.

`shared.schemas` and `shared.errors` are dependency-light (pydantic only) because
they ship to the GPU side (services/gpu, also inside the Modal image).
"""
