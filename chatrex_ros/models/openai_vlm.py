"""Any VLM behind an OpenAI-compatible chat-completions server as a :class:`~chatrex_ros.models.base.LanguageBackend`.

vLLM, SGLang, TGI, Ollama, LM Studio and llama.cpp's server all speak ``POST {base_url}/chat/completions``. One
request per query: the frame as a JPEG data URL, then the proposals listed in order and the task's ChatRex
question (:func:`chatrex_ros.core.vlm_protocol.vlm_request_text`); the reply is normalised into the ChatRex
grammar (:func:`~chatrex_ros.core.vlm_protocol.normalise_vlm_answer`), so its indices are resolved against the
frame's exact ordered list like ChatRex-7B's.

Transport is the official ``openai`` client (``pip install 'chatrex_ros[vlm]'``): ``timeout_s`` per request,
``retries`` with exponential backoff on connection errors, timeouts, 408/409/429 and 5xx (the client's own
policy); any other HTTP error, or a body that is not a chat completion, raises :class:`VLMServerError` with the
server's message, which the caller answers as MODEL_ERROR. The API key is read from the environment variable
``api_key_env`` names, never from a parameter, and is never logged or echoed.
"""

from __future__ import annotations

import base64
import os
from typing import Any

import numpy as np

from chatrex_ros.core.vlm_protocol import (
    DEFAULT_MATCH_IOU,
    VLM_SYSTEM_PROMPT,
    check_box_format,
    normalise_vlm_answer,
    vlm_request_text,
)

INSTALL_HINT = "pip install 'chatrex_ros[vlm]'"
NO_KEY = "no-key"
"""Sent as the API key when none is configured: local servers (vLLM, Ollama) accept any."""


class VLMServerError(RuntimeError):
    """The server refused the request or answered something that is not a chat completion."""


class OpenAIVLMBackend:
    """A LanguageBackend that asks an OpenAI-compatible VLM server (see the module docstring)."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        api_key_env: str = "",
        box_format: str = "pixel",
        timeout_s: float = 30.0,
        retries: int = 2,
        match_iou: float = DEFAULT_MATCH_IOU,
        jpeg_quality: int = 90,
    ) -> None:
        if not base_url:
            raise ValueError("the openai backend needs vlm.base_url, e.g. http://gpu-host:8000/v1")
        if not model:
            raise ValueError("the openai backend needs vlm.model: the model name the server serves")
        if not 0.0 < timeout_s <= 3600.0:
            raise ValueError(f"timeout_s must be in (0, 3600], got {timeout_s}")
        if not 0 <= retries <= 10:
            raise ValueError(f"retries must be 0..10, got {retries}")
        if not 0.0 < match_iou <= 1.0:
            raise ValueError(f"match_iou must be in (0, 1], got {match_iou}")
        self.box_format = check_box_format(box_format)
        self.match_iou = match_iou
        self.model = model
        self.jpeg_quality = int(jpeg_quality)
        api_key = NO_KEY
        if api_key_env:
            api_key = os.environ.get(api_key_env, "")
            if not api_key:
                raise ValueError(f"vlm.api_key_env names {api_key_env!r}, but that environment variable is not set")
        try:
            import openai
        except ImportError as error:
            raise ImportError(f"the openai language backend needs the openai client: {INSTALL_HINT}") from error
        self._openai = openai
        self._client = openai.OpenAI(base_url=base_url, api_key=api_key, timeout=timeout_s, max_retries=retries)
        self.name = f"openai:{model}"

    def generate(self, image_rgb: np.ndarray, boxes_xyxy: np.ndarray, prompt: str, max_new_tokens: int = 512) -> str:
        """Ask the server about one frame; the reply in the ChatRex grammar (VLMServerError when it fails)."""
        height, width = image_rgb.shape[:2]
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": VLM_SYSTEM_PROMPT},
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": self._data_url(image_rgb)}},
                    {"type": "text", "text": vlm_request_text(prompt, boxes_xyxy, width, height, self.box_format)},
                ],
            },
        ]
        openai = self._openai
        try:
            completion = self._client.chat.completions.create(
                model=self.model,
                messages=messages,  # type: ignore[arg-type]  # plain dicts are the documented wire format
                max_tokens=int(max_new_tokens),
                temperature=0.0,
                # vLLM/SGLang: keep special tokens in the text; a model whose vocabulary has <objK> needs them.
                extra_body={"skip_special_tokens": False},
            )
        except openai.APIStatusError as error:
            raise VLMServerError(f"VLM server answered HTTP {error.status_code}: {_server_message(error)}") from None
        except openai.APITimeoutError:
            raise VLMServerError("VLM server did not answer in time (vlm.timeout_s)") from None
        except openai.APIConnectionError as error:
            raise VLMServerError(f"cannot reach the VLM server: {error}") from None
        except (openai.APIResponseValidationError, ValueError) as error:
            raise VLMServerError(f"the VLM server's reply is not a chat completion: {error}") from None
        text = _reply_text(completion)
        return normalise_vlm_answer(text, boxes_xyxy, width, height, self.box_format, self.match_iou)

    def _data_url(self, image_rgb: np.ndarray) -> str:
        import cv2

        ok, jpeg = cv2.imencode(".jpg", image_rgb[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, self.jpeg_quality])
        if not ok:
            raise VLMServerError("could not encode the frame as JPEG")
        return "data:image/jpeg;base64," + base64.b64encode(jpeg.tobytes()).decode("ascii")


def _reply_text(completion: Any) -> str:
    """The first choice's text; VLMServerError for a completion without one."""
    choices = getattr(completion, "choices", None)
    if not choices:
        raise VLMServerError("the VLM server's reply has no choices")
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if not isinstance(content, str):
        raise VLMServerError("the VLM server's reply has no text content")
    return content


def _server_message(error: Any) -> str:
    """The server's own error message when its body has one, else the status line."""
    body = getattr(error, "body", None)
    if isinstance(body, dict):
        detail = body.get("error", body)
        message = detail.get("message") if isinstance(detail, dict) else detail
        if message:
            return str(message)[:300]
    if isinstance(body, str) and body.strip():  # a plain-text error page (a proxy's, a wrong path's)
        return " ".join(body.split())[:300]
    return str(getattr(error, "message", "") or error)[:300]
