"""What a limachat patch to vLLM is (serve/vllm_plugin.py applies them): its range, platform, symbols and
upstream report, and the mark a patched function carries."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

MARK = "_limachat_patch"


@dataclass(frozen=True)
class Patch:
    name: str
    versions: str  # a PEP 440 specifier of the vLLM versions it was written for and checked on
    platform: str  # "cpu": the patch is for vLLM's CPU backend only; "any": every backend
    symbols: tuple[str, ...]  # "module:attribute.path" it replaces or reads; all must exist
    upstream: str  # the report upstream
    remove_when: str
    apply: Callable[[], None]
