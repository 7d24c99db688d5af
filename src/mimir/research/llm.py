"""Optional LLM for ask_index prose: OpenAI-compatible, Gemini or Ollama, by URL and key.

The model only phrases the answer; evidence selection and citation checking stay
in Mimir (see ask.py). Failures raise LLMError and ask_index falls back to its
extractive answer, saying so.
"""

from __future__ import annotations

from typing import Any

import httpx

from mimir.config import MimirSettings


class LLMError(Exception):
    pass


class LLMClient:
    def __init__(
        self, provider: str, url: str, model: str, api_key: str | None, timeout_s: float = 60.0
    ) -> None:
        if provider not in ("openai", "gemini", "ollama"):
            raise ValueError(f"unknown LLM provider {provider!r}: use openai, gemini or ollama")
        self.provider = provider
        self.url = url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout_s

    def complete(self, system: str, user: str) -> str:
        try:
            if self.provider == "openai":
                return self._openai(system, user)
            if self.provider == "gemini":
                return self._gemini(system, user)
            return self._ollama(system, user)
        except httpx.HTTPError as exc:
            raise LLMError(f"{self.provider} request failed: {exc}") from exc
        except (KeyError, IndexError, TypeError, ValueError) as exc:
            raise LLMError(f"{self.provider} returned an unexpected response: {exc}") from exc

    def _post(self, url: str, body: dict[str, Any], headers: dict[str, str]) -> Any:
        resp = httpx.post(url, json=body, headers=headers, timeout=self.timeout)
        if resp.status_code >= 400:
            raise LLMError(f"{self.provider} answered HTTP {resp.status_code}: {resp.text[:200]}")
        return resp.json()

    def _openai(self, system: str, user: str) -> str:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        data = self._post(
            f"{self.url}/chat/completions",
            {
                "model": self.model,
                "temperature": 0,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            },
            headers,
        )
        return str(data["choices"][0]["message"]["content"])

    def _gemini(self, system: str, user: str) -> str:
        headers = {"x-goog-api-key": self.api_key} if self.api_key else {}
        data = self._post(
            f"{self.url}/v1beta/models/{self.model}:generateContent",
            {
                "systemInstruction": {"parts": [{"text": system}]},
                "contents": [{"role": "user", "parts": [{"text": user}]}],
            },
            headers,
        )
        return "".join(p.get("text", "") for p in data["candidates"][0]["content"]["parts"])

    def _ollama(self, system: str, user: str) -> str:
        data = self._post(
            f"{self.url}/api/chat",
            {
                "model": self.model,
                "stream": False,
                "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
            },
            {},
        )
        return str(data["message"]["content"])


def llm_from_settings(settings: MimirSettings) -> LLMClient | None:
    if not settings.llm_provider:
        return None
    if not settings.llm_url or not settings.llm_model:
        raise ValueError("MIMIR_LLM_PROVIDER needs MIMIR_LLM_URL and MIMIR_LLM_MODEL")
    return LLMClient(
        settings.llm_provider,
        settings.llm_url,
        settings.llm_model,
        settings.llm_api_key,
        settings.llm_timeout_s,
    )
