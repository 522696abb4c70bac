"""limachat's patches to vLLM's HTTP server (registered in serve/vllm_plugin.py): the key on every route, and
adapters loaded at run time only from the home's folders."""

from __future__ import annotations

import os

from limachat.serve.plugin_env import ADAPTER_ROOTS, STATIC_ADAPTERS
from limachat.serve.vllm_patch import MARK


def adapter_refusal(path: str, roots: list[str], static: list[str]) -> str | None:
    """Why an adapter at `path` may not be loaded (None: it may): only folders under one of `roots`
    (resolved, so neither `..` nor a symlink leads out) and the adapters the server was started with."""
    from pathlib import Path

    where = Path(path).resolve()
    if str(where) in static or any(where.is_relative_to(Path(root).resolve()) for root in roots):
        return None
    return f"adapters are loaded only from {' or '.join(roots)} (server.adapter_dirs adds folders); {path} is outside"


def _patch_adapter_root() -> None:
    """vLLM's runtime LoRA loading (VLLM_ALLOW_RUNTIME_LORA_UPDATING, on for the CITING rounds and the
    app's "serve it") loads any path the caller names, from anywhere on the machine. Under `limachat
    serve` only the home's checkpoints folder (and server.adapter_dirs) is allowed: any other path gets
    HTTP 400 with one line."""
    from http import HTTPStatus

    from vllm.entrypoints.openai.models.serving import OpenAIServingModels
    from vllm.entrypoints.serve import create_error_response

    original = OpenAIServingModels._check_load_lora_adapter_request

    async def _check_load_lora_adapter_request(self, request):
        roots = [r for r in os.environ.get(ADAPTER_ROOTS, "").split(os.pathsep) if r]
        if roots and request.lora_path:
            why = adapter_refusal(request.lora_path, roots, os.environ.get(STATIC_ADAPTERS, "").split(os.pathsep))
            if why:
                return create_error_response(
                    message=why, err_type="InvalidUserInput", status_code=HTTPStatus.BAD_REQUEST
                )
        return await original(self, request)

    setattr(_check_load_lora_adapter_request, MARK, True)
    OpenAIServingModels._check_load_lora_adapter_request = _check_load_lora_adapter_request


OPEN_PATHS = ("/health", "/ping", "/version", "/metrics")  # what the port answers without the key: probes, counters


def _patch_guard_every_route() -> None:
    """vLLM's `--api-key` (VLLM_API_KEY) guards only paths under /v1, /v2, /inference and /cohere. The same
    server answers completions on /invocations and loads and unloads adapters on /adapters (its SageMaker
    routes), and tokenizes on /tokenize, all without the key. Under `limachat serve` every path but the
    probes and counters of OPEN_PATHS needs the key."""
    from starlette.datastructures import Headers
    from starlette.responses import JSONResponse
    from vllm.entrypoints.serve.middleware.authenticate import AuthenticationMiddleware

    def __call__(self, scope, receive, send):
        if scope["type"] in ("http", "websocket") and scope.get("method") != "OPTIONS":
            path = scope["path"].removeprefix(scope.get("root_path", ""))
            if path not in OPEN_PATHS and not self.verify_token(Headers(scope=scope)):
                return JSONResponse(content={"error": "Unauthorized"}, status_code=401)(scope, receive, send)
        return self.app(scope, receive, send)

    setattr(__call__, MARK, True)
    AuthenticationMiddleware.__call__ = __call__
