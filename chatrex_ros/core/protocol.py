"""The ChatRex text protocol: what is sent to the model, and how its index answers become boxes.

ChatRex never outputs coordinates. It is given an ordered list of at most 100 boxes and answers with
index tokens (``<obj7>``) grouped under the phrase they ground::

    A <ground>man</ground><objects><obj2></objects> rides a <ground>horse</ground><objects><obj0></objects>.

This module is the single place that knows the prompt templates and that grammar, so every node, the
offline evaluation and the CLI agree on them. It needs only the standard library and numpy, and never
raises on model output: a language model can say anything.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType

import numpy as np

from chatrex_ros.core.types import MAX_PROPOSALS, Detection

MAX_BOX_INDEX = MAX_PROPOSALS - 1
"""The model's vocabulary has ``<obj0>``..``<obj99>``: no index above this can be asked or answered."""

MAX_TEXT_CHARS = 1000
"""Longest question, or longest joined target text, accepted by :func:`build_prompt`.

A guard against runaway inputs (a whole document pasted into a Query): the prompt shares the model's
context with 576 image tokens and up to 100 object tokens.
"""


class Task(StrEnum):
    """What the model is asked to do; the values are the ``Query.task`` strings of the ROS messages."""

    DETECT = "detect"
    COUNT = "count"
    REGION_CATEGORY = "region_category"
    REGION_PHRASE = "region_phrase"
    REGION_BRIEF = "region_brief"
    REGION_SENTENCE = "region_sentence"
    CAPTION_BRIEF = "caption_brief"
    CAPTION_DETAILED = "caption_detailed"
    CHAT = "chat"

    @classmethod
    def parse(cls, value: str) -> Task:
        """Task from its name, case- and surrounding-whitespace-insensitive (``" Detect "`` works)."""
        if isinstance(value, cls):
            return value
        if isinstance(value, str):
            try:
                return cls(value.strip().lower())
            except ValueError:
                pass
        valid = ", ".join(task.value for task in cls)
        raise ValueError(f"unknown task {value!r}; valid tasks: {valid}")


TARGET_TASKS = frozenset({Task.DETECT, Task.COUNT})
"""Tasks whose ``[OBJ]`` is one or more text phrases."""

REGION_TASKS = frozenset({Task.REGION_CATEGORY, Task.REGION_PHRASE, Task.REGION_BRIEF, Task.REGION_SENTENCE})
"""Tasks whose ``[OBJ]`` is one or more proposal indices (``<obj3>; <obj5>``)."""

# The strings the model was trained on, verbatim ("breifly" included: correcting it changes the input
# distribution). ``[OBJ]`` is substituted; CHAT appends the question instead.
PROMPT_TEMPLATES: Mapping[Task, str] = MappingProxyType(
    {
        Task.DETECT: "Please detect [OBJ] in this image. Answer the question with object indexes.",
        Task.COUNT: (
            "How many [OBJ] are there in this image? Answer the question with the number of objects and"
            " locate them with object indexes."
        ),
        Task.REGION_CATEGORY: (
            "What is the category name of [OBJ]? Answer the question with its category name in free format."
        ),
        Task.REGION_PHRASE: (
            "Can you provide me with a short phrase to describe [OBJ]? Answer the question with a short phrase."
        ),
        Task.REGION_BRIEF: (
            "Can you provide me with a brief description of [OBJ]? Answer the question with brief description."
        ),
        Task.REGION_SENTENCE: (
            "Can you provide a one sentence description of [OBJ] in the image? Answer the question with a one"
            " sentence description."
        ),
        Task.CAPTION_BRIEF: (
            "Please breifly describe this image in one sentence and detect all the mentioned objects. Answer"
            " the question with grounded answer."
        ),
        Task.CAPTION_DETAILED: (
            "Please provide a detailed description of the image and detect all the mentioned objects. Answer"
            " the question with grounded object indexes."
        ),
        Task.CHAT: "Answer the question in grounded format. ",
    }
)

TARGET_SEPARATOR = "; "
"""How several targets are joined in ``[OBJ]`` (the training format)."""

# --- special tokens -------------------------------------------------------------------------------
# Exactly the 104 added tokens: <obj0>..<obj99> (no leading zeros, nothing above 99) and the four tags.
# Text such as "<obj100>" cannot come out of the tokenizer as one token, so outside a group it is ordinary
# text (inside an objects block it is an index that names no proposal: see _INDEX_LIKE).
_SPECIAL_BODY = r"(?:/?ground|/?objects|obj(?:[1-9]?\d))"
SPECIAL_TOKEN_RE = re.compile(rf"<{_SPECIAL_BODY}>")
"""Matches any of the model's 104 special tokens."""

_TRAILING_SPECIAL_TOKEN_RE = re.compile(rf"<{_SPECIAL_BODY}>\Z")
_LONGEST_SPECIAL_TOKEN = len("</objects>")
_INDEX_TOKEN_RE = re.compile(r"<obj([1-9]?\d)>")
_STRUCTURE_TAGS = ("<ground>", "</ground>", "<objects>", "</objects>")

# Input text is checked more broadly than output is parsed: anything that looks like a protocol tag
# (including <obj007>, <obj100>) or the processor's own placeholders (<image>, <roi>) is refused, so a
# phrase or question can never be mistaken for structure.
_RESERVED_INPUT_RE = re.compile(r"</?(?:ground|objects)>|<obj\d+>|<image>|<roi>", re.IGNORECASE)

# One well-formed group. The phrase may hold anything but a special token (unrolled loop, possessive
# quantifiers: linear time on adversarial input). The objects block may be cut by the end of the text
# (the generation budget ran out): the indices already written are real, so they are kept.
# Inside an objects block any index-looking token counts (``<obj150>``, ``<obj-1>``, ``<obj007>``): it
# cannot be a model token, but treating it as text would void the group's valid indices. Such tokens are
# dropped and reported (``AnswerGroup.dropped`` / ``.invalid``); outside groups they stay ordinary text.
_INDEX_LIKE = r"<obj[-+]?+\d++>"
_GROUP_RE = re.compile(
    r"<ground>(?P<phrase>[^<]*+(?:<(?!" + _SPECIAL_BODY + r">)[^<]*+)*+)</ground>"
    r"\s*+<objects>(?P<objects>(?:\s*+" + _INDEX_LIKE + r")*+)\s*+(?:</objects>|\Z)"
)
_INDEX_LIKE_RE = re.compile(r"<obj([-+]?+\d++)>")
_CANONICAL_INDEX_RE = re.compile(r"0|-?[1-9]\d{0,17}")  # no sign but "-", no leading zeros, fits int64
MAX_TOKEN_CHARS = 24
"""An invalid token longer than this is reported shortened (``<obj1234567…``): the report stays bounded."""
_HSPACE_RE = re.compile(r"[^\S\n]+")
_BLANK_LINES_RE = re.compile(r"\n{3,}")


# --- prompts --------------------------------------------------------------------------------------
def build_prompt(
    task: Task | str,
    targets: str | int | Iterable[str] | Iterable[int] = (),
    question: str = "",
    *,
    num_boxes: int | None = None,
) -> str:
    """The exact prompt string for ``task``.

    ``targets``: for DETECT/COUNT a phrase or a sequence of phrases (joined with ``"; "``); for region
    tasks a proposal index or a sequence of them (rendered ``<obj3>; <obj5>``); unused otherwise.
    ``question``: CHAT only. ``num_boxes``: when given, region indices must also be below it (the
    number of proposals the model will see). Anything a task does not use must be left empty, so a
    wrongly routed query fails loudly instead of being silently ignored.
    """
    task = Task.parse(task)
    question_given = not (isinstance(question, str) and question == "")
    targets_given = _has_targets(targets)

    if task is not Task.CHAT and question_given:
        raise ValueError(f"task {task.value!r} takes no question (only 'chat' does); got {question!r}")
    if task in TARGET_TASKS:
        obj_text = _render_phrases(task, targets)
    elif task in REGION_TASKS:
        obj_text = _render_indices(task, targets, num_boxes)
    else:
        if targets_given:
            raise ValueError(f"task {task.value!r} takes no targets; got {targets!r}")
        if task is Task.CHAT:
            return PROMPT_TEMPLATES[task] + _check_text(question, "question", task)
        return PROMPT_TEMPLATES[task]
    return PROMPT_TEMPLATES[task].replace("[OBJ]", obj_text)


def _has_targets(targets: object) -> bool:
    if isinstance(targets, (str, bytes)):
        return targets != "" and targets != b""
    if isinstance(targets, np.ndarray):
        return targets.size > 0
    if isinstance(targets, (list, tuple, set, frozenset)):
        return len(targets) > 0
    return targets is not None


def _as_items(targets: object) -> list[object]:
    """A single target or an iterable of them, as a list (a str is ONE phrase, not characters)."""
    if isinstance(targets, (str, bytes, int, np.integer)) or targets is None:
        return [] if targets is None else [targets]
    if isinstance(targets, np.ndarray):
        flat: list[object] = list(targets.reshape(-1))
        return flat
    try:
        items: list[object] = list(targets)  # type: ignore[call-overload]
    except TypeError:
        return [targets]
    return items


def _check_text(text: object, what: str, task: Task) -> str:
    if not isinstance(text, str):
        raise ValueError(f"{what} for task {task.value!r} must be a str, got {type(text).__name__}")
    stripped = text.strip()
    if not stripped:
        raise ValueError(f"task {task.value!r} needs a non-empty {what}")
    if len(stripped) > MAX_TEXT_CHARS:
        raise ValueError(f"{what} is {len(stripped)} characters long; the limit is {MAX_TEXT_CHARS}")
    reserved = _RESERVED_INPUT_RE.search(stripped)
    if reserved:
        raise ValueError(
            f"{what} {stripped!r} contains the reserved token {reserved.group()!r}; the model would read it"
            " as protocol structure, not text"
        )
    return stripped


def _render_phrases(task: Task, targets: object) -> str:
    items = _as_items(targets)
    if not items:
        raise ValueError(f"task {task.value!r} needs at least one target phrase")
    phrases = []
    for item in items:
        if not isinstance(item, str):
            raise ValueError(f"task {task.value!r} takes text phrases as targets, got {item!r} ({type(item).__name__})")
        phrases.append(_check_text(item, "target phrase", task))
    joined = TARGET_SEPARATOR.join(phrases)
    if len(joined) > MAX_TEXT_CHARS:
        raise ValueError(
            f"the {len(phrases)} target phrases join to {len(joined)} characters; the limit is {MAX_TEXT_CHARS}"
        )
    return joined


def _render_indices(task: Task, targets: object, num_boxes: int | None) -> str:
    items = _as_items(targets)
    if not items:
        raise ValueError(f"task {task.value!r} needs at least one proposal index")
    if num_boxes is not None:
        num_boxes = _check_num_boxes(num_boxes)
    indices: list[int] = []
    for item in items:
        if isinstance(item, (bool, np.bool_)) or not isinstance(item, (int, np.integer)):
            raise ValueError(
                f"task {task.value!r} takes proposal indices (int) as targets, got {item!r} ({type(item).__name__})"
            )
        index = int(item)
        if not 0 <= index <= MAX_BOX_INDEX:
            raise ValueError(f"proposal index {index} is outside 0..{MAX_BOX_INDEX} (the model's <objK> tokens)")
        if num_boxes is not None and index >= num_boxes:
            raise ValueError(f"proposal index {index} is not below the number of proposals ({num_boxes})")
        if index in indices:
            raise ValueError(f"proposal index {index} is listed twice")
        indices.append(index)
    return TARGET_SEPARATOR.join(f"<obj{index}>" for index in indices)


def _check_num_boxes(num_boxes: object) -> int:
    if isinstance(num_boxes, (bool, np.bool_)) or not isinstance(num_boxes, (int, np.integer)) or num_boxes < 0:
        raise ValueError(f"num_boxes must be a non-negative int, got {num_boxes!r}")
    return int(num_boxes)


# --- answers --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AnswerGroup:
    """One ``<ground>phrase</ground><objects>...</objects>`` group, in the order the model wrote it.

    ``indices``: valid indices (< num_boxes), duplicates removed, first occurrence first.
    ``dropped``: index numbers the group names that are not in the list the model was given, in order:
    at or above num_boxes (``<obj9>`` with 3 boxes, ``<obj150>``) or negative (``<obj-1>``).
    ``invalid``: index-looking tokens whose number is not written as an index (``<obj007>``, ``<obj+1>``,
    ``<obj-0>``, more than 18 digits), as written, shortened to :data:`MAX_TOKEN_CHARS`. Neither kind
    voids the group: its valid indices are kept.
    """

    phrase: str
    indices: tuple[int, ...]
    dropped: tuple[int, ...] = ()
    invalid: tuple[str, ...] = ()


@dataclass(frozen=True)
class ParsedAnswer:
    """Everything recoverable from one raw answer.

    ``groups``: every well-formed group in order; a repeated phrase stays a separate group.
    ``mentions``: valid bare ``<objK>`` tokens outside groups (``<obj0> shows a dog``), deduplicated,
    first occurrence first; ``dropped_mentions``: the out-of-range ones. ``text``: the answer for a
    human, special tokens removed, grounded phrases kept in place. ``truncated``: the answer stops
    inside an open ``<ground>``/``<objects>`` element (or just after a ``</ground>``), i.e. the
    generation budget probably ran out before the model finished.
    """

    groups: tuple[AnswerGroup, ...]
    mentions: tuple[int, ...]
    text: str
    num_boxes: int
    dropped_mentions: tuple[int, ...] = ()
    truncated: bool = False

    @property
    def all_indices(self) -> tuple[int, ...]:
        """Every valid index named by any group, in order of appearance, without duplicates."""
        return tuple(dict.fromkeys(index for group in self.groups for index in group.indices))

    @property
    def dropped_indices(self) -> tuple[int, ...]:
        """Every out-of-range index number: the groups' ``dropped`` in group order, then ``dropped_mentions``."""
        return (*(index for group in self.groups for index in group.dropped), *self.dropped_mentions)

    @property
    def invalid_tokens(self) -> tuple[str, ...]:
        """Every group's ``invalid`` tokens, in group order."""
        return tuple(token for group in self.groups for token in group.invalid)

    def ignored_summary(self, max_listed: int = 10) -> str:
        """One sentence for an Answer's status message naming the ignored index tokens; ``""`` when none.

        ``"ignored 2 object index tokens naming none of the 12 proposals: <obj150>, <obj007>"``; at most
        ``max_listed`` tokens are listed, then how many more there were.
        """
        tokens = [f"<obj{index}>" for index in self.dropped_indices] + list(self.invalid_tokens)
        if not tokens:
            return ""
        listed = ", ".join(tokens[: max(max_listed, 0)])
        more = len(tokens) - max(max_listed, 0)
        if more > 0:
            listed = f"{listed} and {more} more" if listed else f"{more} tokens"
        noun = "token" if len(tokens) == 1 else "tokens"
        return f"ignored {len(tokens)} object index {noun} naming none of the {self.num_boxes} proposals: {listed}"


def parse_answer(text: str, num_boxes: int) -> ParsedAnswer:
    """Parse a raw ChatRex answer against the ``num_boxes`` proposals it was given.

    Never raises on any ``str``: malformed structure degrades to plain text, never to a group with
    indices the model did not write. Tolerated: the spaced form
    ``<ground> x </ground> <objects> <obj1> </objects>``, and an objects block cut off by the end of
    the text. A group that is directly followed by another (no whitespace, as in detection answers)
    is separated from it by ``"; "`` in ``.text``, so "person" and "dog" do not read "persondog".
    """
    if not isinstance(text, str):
        raise ValueError(f"text must be a str, got {type(text).__name__}")
    num_boxes = _check_num_boxes(num_boxes)

    groups: list[AnswerGroup] = []
    mentions: dict[int, None] = {}
    dropped_mentions: list[int] = []
    pieces: list[str] = []
    position = 0
    previous_group_end = -1
    for match in _GROUP_RE.finditer(text):
        start, end = match.span()
        if start > position:
            pieces.append(_free_text(text[position:start], num_boxes, mentions, dropped_mentions))
        elif start == previous_group_end:
            pieces.append(TARGET_SEPARATOR)
        raw_phrase, objects_block = match.groups()
        valid, dropped, invalid = _split_indices(objects_block, num_boxes)
        groups.append(AnswerGroup(" ".join(raw_phrase.split()), valid, dropped, invalid))
        pieces.append(raw_phrase.rstrip())
        position = previous_group_end = end
    if position < len(text):
        pieces.append(_free_text(text[position:], num_boxes, mentions, dropped_mentions))

    return ParsedAnswer(
        groups=tuple(groups),
        mentions=tuple(mentions),
        text=_normalise_whitespace(_remove_special_tokens("".join(pieces))),
        num_boxes=num_boxes,
        dropped_mentions=tuple(dropped_mentions),
        truncated=_ends_inside_element(text),
    )


def _split_indices(objects_block: str, num_boxes: int) -> tuple[tuple[int, ...], tuple[int, ...], tuple[str, ...]]:
    """(valid indices deduplicated, out-of-range numbers, tokens not written as an index) of one objects block."""
    valid: dict[int, None] = {}
    dropped: list[int] = []
    invalid: list[str] = []
    for written in _INDEX_LIKE_RE.findall(objects_block):
        if not _CANONICAL_INDEX_RE.fullmatch(written):
            token = f"<obj{written}>"
            invalid.append(token if len(token) <= MAX_TOKEN_CHARS else token[: MAX_TOKEN_CHARS - 1] + "\u2026")
            continue
        index = int(written)  # at most 18 digits: cheap, exact
        if 0 <= index < num_boxes:
            valid[index] = None
        else:
            dropped.append(index)
    return tuple(valid), tuple(dropped), tuple(invalid)


def _free_text(segment: str, num_boxes: int, mentions: dict[int, None], dropped: list[int]) -> str:
    """Text outside groups: record bare index tokens as mentions, strip every special token."""
    if "<" not in segment:
        return segment
    for digits in _INDEX_TOKEN_RE.findall(segment):
        index = int(digits)
        if index < num_boxes:
            mentions[index] = None
        else:
            dropped.append(index)
    return SPECIAL_TOKEN_RE.sub("", segment)


def _remove_special_tokens(text: str) -> str:
    """Remove every special token, including ones that removal itself creates (``<obj<obj1>1>``).

    ``.text`` must never show the model's control tokens to a human.
    """
    cleaned = SPECIAL_TOKEN_RE.sub("", text)
    if not SPECIAL_TOKEN_RE.search(cleaned):
        return cleaned
    # Rare, adversarial case. A stack keeps it linear (re-running the substitution until nothing
    # changes is quadratic in the nesting depth): a token can only complete at the ">" just appended.
    kept: list[str] = []
    for char in cleaned:
        kept.append(char)
        if char == ">":
            tail = "".join(kept[-_LONGEST_SPECIAL_TOKEN:])
            token = _TRAILING_SPECIAL_TOKEN_RE.search(tail)
            if token:
                del kept[len(kept) - (len(tail) - token.start()) :]
    return "".join(kept)


def _normalise_whitespace(text: str) -> str:
    """Collapse runs of spaces/tabs, trim each line, keep at most one blank line between paragraphs."""
    if "\n" not in text and "\r" not in text:
        return _HSPACE_RE.sub(" ", text).strip()
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    joined = "\n".join(_HSPACE_RE.sub(" ", line).strip() for line in lines)
    return _BLANK_LINES_RE.sub("\n\n", joined).strip()


def _ends_inside_element(text: str) -> bool:
    """True when the text stops inside an open ``<ground>``/``<objects>`` element or right after a ``</ground>``.

    Right after a ``</ground>`` means its objects block never started (only whitespace follows it).
    """
    position, tag = max((text.rfind(tag), tag) for tag in _STRUCTURE_TAGS)
    if position < 0:
        return False
    if tag == "</ground>":
        return not text[position + len(tag) :].strip()
    return tag in ("<ground>", "<objects>")


# --- resolution -----------------------------------------------------------------------------------
def resolve_detections(
    parsed: ParsedAnswer,
    boxes: np.ndarray,
    scores: np.ndarray,
    *,
    include_mentions: bool = False,
) -> list[Detection]:
    """One detection per (group, index), in group order, from the EXACT box list given to the model.

    ``boxes`` (N, 4) x1 y1 x2 y2 and ``scores`` (N,) must have the ``num_boxes`` the answer was parsed
    against: a different list means the indices point at the wrong boxes, so that is an error, not a
    guess. Bare mentions are not detections (they name a region, not an answer to a detection
    question) unless ``include_mentions``; then they follow the groups with an empty phrase.
    """
    if not isinstance(parsed, ParsedAnswer):
        raise ValueError(f"parsed must be a ParsedAnswer, got {type(parsed).__name__}")
    boxes = np.asarray(boxes)
    scores = np.asarray(scores)
    if boxes.ndim != 2 or boxes.shape[1] != 4:
        if boxes.size == 0 and parsed.num_boxes == 0:
            boxes = boxes.reshape(0, 4)
        else:
            raise ValueError(f"boxes must have shape (N, 4), got {boxes.shape}")
    if scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
        raise ValueError(f"scores must have shape ({boxes.shape[0]},) to match boxes, got {scores.shape}")
    if boxes.shape[0] != parsed.num_boxes:
        raise ValueError(
            f"the answer was parsed against {parsed.num_boxes} boxes but {boxes.shape[0]} were given;"
            " pass the exact list the model saw"
        )
    box_rows = boxes.astype(np.float64).tolist()
    score_list = scores.astype(np.float64).tolist()

    def detection(index: int, phrase: str) -> Detection:
        x1, y1, x2, y2 = box_rows[index]
        return Detection(proposal_index=index, label=phrase, box=(x1, y1, x2, y2), score=score_list[index])

    detections = [detection(index, group.phrase) for group in parsed.groups for index in group.indices]
    if include_mentions:
        detections.extend(detection(index, "") for index in parsed.mentions)
    return detections
