"""Rules both the API and the worker/trainer follow, with one owner each.

Torch-free and SQLAlchemy-free: this package ships to the GPU side with
`shared.schemas` and `shared.errors`.
"""
