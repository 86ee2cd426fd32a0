"""The API application factory."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from pathlib import Path

from arq import create_pool
from fastapi import Depends, FastAPI
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse
from fastapi.staticfiles import StaticFiles
from redis.asyncio import Redis
from starlette.responses import Response
from starlette.types import Scope

from services.api.adapters.endpoints import router as adapters_router
from services.api.auth.access import CredentialsBeforeBody, authorize, document_security
from services.api.auth.endpoints import router as auth_router
from services.api.auth.rate import create_limiter
from services.api.data.endpoints import router as data_router
from services.api.deps import AppState, reject_nul_in_url
from services.api.errors import Unavailable, install_error_handlers
from services.api.exports.endpoints import router as exports_router
from services.api.finetuning.endpoints import router as finetuning_router
from services.api.limits import install_body_limit
from services.api.metrics.endpoints import router as metrics_router
from services.api.metrics.http import HttpMetrics
from services.api.security import CSP_HEADER, SecurityHeadersMiddleware, docs_csp
from services.api.serving.endpoints import router as serving_router
from services.api.serving.engine import EngineClient
from services.api.skills.endpoints import router as skills_router
from services.api.streams.endpoints import router as streams_router
from services.api.system.endpoints import router as system_router
from services.api.training.endpoints import router as training_router
from shared.db.engine import create_engine, create_sessionmaker
from shared.db.tenancy import scoped_sessionmaker
from shared.event_hub import EventHub, hub_client_name
from shared.queue import redis_settings
from shared.settings import Settings

SWAGGER_ASSETS = str(files("fastapi_offline") / "static")
# The dashboard SPA, built from services/api/dashboard/ (sources) into dist/ (committed).
DASHBOARD = Path(__file__).parent / "dashboard" / "dist"
DESCRIPTION = """Fast Brain turns a *skill* (a system prompt plus example conversations)
into a LoRA adapter: create a skill, start training, follow it live over the
WebSocket, then chat with the adapter. Errors use one shape:
`{"error": {"code", "message", "details", "suggestions"}}`."""
# uvicorn's protocol-level WebSocket keepalive: a client that stops answering PINGs
# (its network went away without a close) is dropped within 4 s, and its stream with
# it. `fastbrain api` passes these to uvicorn; so should any other way of serving the app.
WS_PING_INTERVAL_SECONDS = 2.0
WS_PING_TIMEOUT_SECONDS = 2.0


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    database_url, redis_url = settings.require_urls()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(database_url, application_name="fastbrain-api")
        system_sessionmaker = create_sessionmaker(engine)
        redis = await create_pool(redis_settings(redis_url), default_queue_name=settings.queue_name)
        # Its own named connection: `CLIENT LIST` shows one `fastbrain-api-hub:<host>:<pid>` per API process.
        hub_redis = Redis.from_url(redis_url, client_name=hub_client_name())
        hub = EventHub(hub_redis, system_sessionmaker)  # streams only jobs the endpoint found in the workspace
        engine_client = EngineClient(settings.engine_url, settings.generation_timeout_seconds)
        await hub.start()
        app.state.fastbrain = AppState(
            settings=settings,
            sessionmaker=scoped_sessionmaker(engine),
            system_sessionmaker=system_sessionmaker,
            redis=redis,
            hub=hub,
            limiter=create_limiter(redis_url),
            engine=engine_client,
        )
        try:
            yield
        finally:
            await engine_client.aclose()
            await hub.aclose()
            await hub_redis.aclose()
            await redis.aclose()
            await engine.dispose()

    # Docs assets come from the fastapi-offline package, not a CDN: users may have no internet.
    app = FastAPI(
        title="Fast Brain",
        version="0.1.0",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # Before every route: a NUL in the URL is a 422 (PostgreSQL text cannot hold one); then the key.
        dependencies=[Depends(reject_nul_in_url), Depends(authorize)],
    )
    app.mount("/static/swagger", StaticFiles(directory=SWAGGER_ASSETS), name="swagger")

    @app.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        page = get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="Fast Brain API",
            swagger_js_url="/static/swagger/swagger-ui-bundle.js",
            swagger_css_url="/static/swagger/swagger-ui.css",
            swagger_favicon_url="/static/swagger/favicon.png",
        )
        page.headers[CSP_HEADER] = docs_csp(bytes(page.body).decode())  # its one inline script, by hash
        return page

    app.add_middleware(SecurityHeadersMiddleware)  # CSP, nosniff, no-referrer; no CORS middleware: CORS is off
    install_error_handlers(app)
    install_body_limit(app, settings.max_request_body_bytes)
    app.add_middleware(CredentialsBeforeBody, max_bytes=settings.max_request_body_bytes)
    app.add_middleware(HttpMetrics)  # outermost: also counts what the other middlewares refuse (401, 413)
    routers = (
        skills_router,
        data_router,
        training_router,
        streams_router,
        adapters_router,
        exports_router,
        system_router,
        auth_router,
        serving_router,
        finetuning_router,
        metrics_router,
    )
    for router in routers:
        app.include_router(router)

    mount_dashboard(app)
    document_security(app)
    return app


class ImmutableAssets(StaticFiles):
    """Vite names each asset by its content hash, so a browser may keep it for good."""

    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code == 200:
            response.headers["Cache-Control"] = "public, max-age=31536000, immutable"
        return response


def mount_dashboard(app: FastAPI) -> None:
    """The SPA at `/` (hash-routed, so one page; revalidated each load), its hashed assets cached for good."""
    if (DASHBOARD / "assets").is_dir():
        app.mount("/assets", ImmutableAssets(directory=DASHBOARD / "assets"), name="dashboard-assets")

    @app.get("/", include_in_schema=False)
    async def dashboard() -> FileResponse:
        index = DASHBOARD / "index.html"
        if not index.is_file():
            raise Unavailable(
                "The dashboard is not built.", suggestions=["Run scripts/build_dashboard.sh, or use the API at /docs."]
            )
        return FileResponse(index, headers={"Cache-Control": "no-cache"})

    @app.get("/favicon.svg", include_in_schema=False)
    async def favicon() -> FileResponse:
        return FileResponse(DASHBOARD / "favicon.svg", media_type="image/svg+xml")
