"""TEST DOUBLE of the ChatRex language model: answers from a script instead of running an LLM.

It stands in for the model checkpoint (outside the package) so the node's own logic (queueing, pairing,
parsing, resolution, statuses) runs for real. It records every call so tests can check what it was given.
"""

from __future__ import annotations

import json
import os
import threading

import numpy as np


class ScriptedModel:
    """LanguageBackend test double.

    answer: raw text returned for every prompt (``{n}`` is replaced by the number of boxes).
    answers_by_word: {word: answer}; the first word found in the prompt picks the answer.
    sleep_s: simulated generation time; sleep_by_word: {word: seconds} for prompts containing word.
    fail_word: a prompt containing it raises RuntimeError.
    raise_by_word: {word: "SystemExit" | "KeyboardInterrupt" | "MemoryError"} for prompts containing word.
    record_path: append one JSON line per call (prompt, boxes) for cross-process checks, and one
        ``{"stopped": true}`` line when :meth:`stop` ends a generation early.
    weights_mb: memory the "weights" take (written, so resident), for tests that a freed model is released.
    """

    name = "scripted_test_double"

    def __init__(
        self,
        answer: str = "",
        answers_by_word: dict[str, str] | None = None,
        sleep_s: float = 0.0,
        sleep_by_word: dict[str, float] | None = None,
        fail_word: str = "",
        record_path: str = "",
        raise_by_word: dict[str, str] | None = None,
        weights_mb: int = 0,
    ) -> None:
        self.weights = np.ones(weights_mb * 2**20, np.uint8) if weights_mb else None
        self.raise_by_word = raise_by_word or {}
        self.answer = answer
        self.answers_by_word = answers_by_word or {}
        self.sleep_s = sleep_s
        self.sleep_by_word = sleep_by_word or {}
        self.fail_word = fail_word
        self.record_path = record_path
        self.calls: list[tuple[str, np.ndarray]] = []
        self._stop = threading.Event()

    def stop(self) -> None:
        """The optional LanguageBackend.stop(): end the running (simulated) generation now."""
        self._stop.set()

    def generate(self, image_rgb: np.ndarray, boxes_xyxy: np.ndarray, prompt: str, max_new_tokens: int = 512) -> str:
        self._stop.clear()
        self.calls.append((prompt, np.array(boxes_xyxy, copy=True)))
        if self.record_path:
            with open(self.record_path, "a", encoding="utf-8") as record:
                record.write(
                    json.dumps(
                        {
                            "prompt": prompt,
                            "boxes": np.asarray(boxes_xyxy).tolist(),
                            "image_shape": list(image_rgb.shape),
                            "pid": os.getpid(),
                        }
                    )
                    + "\n"
                )
        for word, name in self.raise_by_word.items():
            if word in prompt:
                raise {"SystemExit": SystemExit, "KeyboardInterrupt": KeyboardInterrupt, "MemoryError": MemoryError}[
                    name
                ](f"scripted {name}")
        if self.fail_word and self.fail_word in prompt:
            raise RuntimeError(f"scripted failure for prompt containing {self.fail_word!r}")
        delay = next((t for word, t in self.sleep_by_word.items() if word in prompt), self.sleep_s)
        if delay and self._stop.wait(delay):
            if self.record_path:
                with open(self.record_path, "a", encoding="utf-8") as record:
                    record.write(json.dumps({"stopped": True}) + "\n")
            return "stopped"
        for word, answer in self.answers_by_word.items():
            if word in prompt:
                return answer.replace("{n}", str(len(boxes_xyxy)))
        return self.answer.replace("{n}", str(len(boxes_xyxy)))
