# The API image: FastAPI, SQLAlchemy, arq; no torch (the API never imports it).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md alembic.ini ./
COPY alembic ./alembic
COPY services ./services
COPY shared ./shared
RUN pip install --no-cache-dir --no-deps -e . && \
    pip install --no-cache-dir "fastapi>=0.121,<0.170" "uvicorn[standard]>=0.30,<0.60" "arq>=0.26,<0.29" \
      "redis>=5,<6" "sqlalchemy[asyncio]>=2.0.30,<2.2" "asyncpg>=0.29,<0.40" "alembic>=1.13,<1.30" \
      "pydantic>=2.7,<3" "pydantic-settings>=2.3,<3" "structlog>=24,<27" "python-multipart>=0.0.9,<1" "httpx>=0.27,<1" \
      "fastapi-offline>=1.7,<2"
EXPOSE 8000
CMD ["fastbrain", "api", "--host", "0.0.0.0", "--port", "8000"]
