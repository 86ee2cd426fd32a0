"""The trainer's stages (`services/gpu/trainer.py` is its process entry and event writer).

- `pipeline`: `train(spec)`, the training run as a few named steps (set up, base model,
  data, model, train, save), yielding event payloads as they happen;
- `model`: the base model with LoRA applied, on the PEFT or the Unsloth path, and the
  warm cache the Modal class fills before its first job;
- `callbacks`: the TrainerCallback that turns each optimizer step into a `progress` payload;
- `checkpoints`: where this attempt saves, and the newest complete checkpoint of the job.
"""
