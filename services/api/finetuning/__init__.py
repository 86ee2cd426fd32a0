"""The OpenAI-compatible fine-tuning API (`/v1/files`, `/v1/fine_tuning/jobs`), mapped onto skills,
training jobs and adapters: docs/openai-fine-tuning.md."""
