"""The app built from the environment, for servers that import it by name
(`agentsvc serve` with several processes, or `uvicorn --factory app.asgi:app_from_environment`)."""

from __future__ import annotations

from fastapi import FastAPI

from app.main import create_app
from app.settings import Settings


def app_from_environment() -> FastAPI:
    return create_app(Settings())
