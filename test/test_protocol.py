"""The ChatRex text protocol: prompt templates, the answer grammar, index resolution."""

from __future__ import annotations

import dataclasses
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from chatrex_ros.core.protocol import (
    MAX_BOX_INDEX,
    MAX_TEXT_CHARS,
    REGION_TASKS,
    TARGET_TASKS,
    AnswerGroup,
    Task,
    build_prompt,
    parse_answer,
    resolve_detections,
)
from chatrex_ros.core.types import Detection

# The 104 special tokens, written out independently of the module's own regex.
SPECIAL_TOKENS = [f"<obj{k}>" for k in range(100)] + ["<ground>", "</ground>", "<objects>", "</objects>"]


def contains_special_token(text: str) -> bool:
    return any(token in text for token in SPECIAL_TOKENS)


# --- Task ------------------------------------------------------------------------------------------
def test_task_values_are_the_message_strings():
    assert [task.value for task in Task] == [
        "detect",
        "count",
        "region_category",
        "region_phrase",
        "region_brief",
        "region_sentence",
        "caption_brief",
        "caption_detailed",
        "chat",
    ]
    assert Task.DETECT == "detect" and isinstance(Task.CHAT, str)


@pytest.mark.parametrize("text", ["detect", " Detect ", "DETECT"])
def test_task_parse_is_lenient_about_case_and_spaces(text):
    assert Task.parse(text) is Task.DETECT


def test_task_parse_accepts_a_task():
    assert Task.parse(Task.REGION_BRIEF) is Task.REGION_BRIEF


def test_task_parse_lists_valid_names_on_unknown():
    with pytest.raises(ValueError, match="unknown task 'detection'.*region_sentence"):
        Task.parse("detection")
    with pytest.raises(ValueError, match="unknown task"):
        Task.parse(3)  # type: ignore[arg-type]


def test_task_groups():
    assert {Task.DETECT, Task.COUNT} == TARGET_TASKS
    assert {Task.REGION_CATEGORY, Task.REGION_PHRASE, Task.REGION_BRIEF, Task.REGION_SENTENCE} == REGION_TASKS
    assert MAX_BOX_INDEX == 99


# --- build_prompt: templates -------------------------------------------------------------------------
# Verbatim from the model's training format (shared/notes/chatrex-facts.md section 3), typo included.
@pytest.mark.parametrize(
    ("task", "targets", "expected"),
    [
        (Task.DETECT, "person", "Please detect person in this image. Answer the question with object indexes."),
        (
            Task.COUNT,
            "apple",
            "How many apple are there in this image? Answer the question with the number of objects and locate"
            " them with object indexes.",
        ),
        (
            Task.REGION_CATEGORY,
            [3],
            "What is the category name of <obj3>? Answer the question with its category name in free format.",
        ),
        (
            Task.REGION_PHRASE,
            [0],
            "Can you provide me with a short phrase to describe <obj0>? Answer the question with a short phrase.",
        ),
        (
            Task.REGION_BRIEF,
            [99],
            "Can you provide me with a brief description of <obj99>? Answer the question with brief description.",
        ),
        (
            Task.REGION_SENTENCE,
            [7],
            "Can you provide a one sentence description of <obj7> in the image? Answer the question with a one"
            " sentence description.",
        ),
        (
            Task.CAPTION_BRIEF,
            (),
            "Please breifly describe this image in one sentence and detect all the mentioned objects. Answer the"
            " question with grounded answer.",
        ),
        (
            Task.CAPTION_DETAILED,
            (),
            "Please provide a detailed description of the image and detect all the mentioned objects. Answer the"
            " question with grounded object indexes.",
        ),
    ],
)
def test_templates_are_exact(task, targets, expected):
    assert build_prompt(task, targets) == expected
    assert build_prompt(task.value, targets) == expected


def test_chat_appends_the_stripped_question():
    prompt = build_prompt(Task.CHAT, question="  What is on the table?\n")
    assert prompt == "Answer the question in grounded format. What is on the table?"


def test_several_phrases_are_joined_with_semicolons():
    prompt = build_prompt("detect", ["red mug", " person ", "dog"])
    assert prompt == "Please detect red mug; person; dog in this image. Answer the question with object indexes."


def test_a_single_string_is_one_phrase_not_characters():
    assert "detect red mug in" in build_prompt("detect", "red mug")


def test_region_indices_are_rendered_as_tokens():
    prompt = build_prompt(Task.REGION_BRIEF, [3, 5])
    assert "brief description of <obj3>; <obj5>?" in prompt
    assert build_prompt(Task.REGION_BRIEF, 4) == build_prompt(Task.REGION_BRIEF, [4])
    assert build_prompt(Task.REGION_BRIEF, np.array([3, 5], dtype=np.int32)) == prompt


def test_phrase_with_brackets_is_not_reexpanded():
    assert "detect [OBJ] thing in" in build_prompt("detect", "[OBJ] thing")


# --- build_prompt: bad arguments ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"task": "nope"}, "unknown task"),
        ({"task": "detect"}, "at least one target phrase"),
        ({"task": "count", "targets": []}, "at least one target phrase"),
        ({"task": "detect", "targets": "   "}, "non-empty target phrase"),
        ({"task": "detect", "targets": ["cat", ""]}, "non-empty target phrase"),
        ({"task": "detect", "targets": "the <obj3>"}, "reserved token '<obj3>'"),
        ({"task": "detect", "targets": "a <ground>cat"}, "reserved token '<ground>'"),
        ({"task": "detect", "targets": "cat</objects>"}, "reserved token '</objects>'"),
        ({"task": "detect", "targets": "<image> cat"}, "reserved token '<image>'"),
        ({"task": "detect", "targets": "cat <obj100>"}, "reserved token '<obj100>'"),
        ({"task": "detect", "targets": [3]}, "text phrases"),
        ({"task": "detect", "targets": "cat", "question": "why?"}, "takes no question"),
        ({"task": "region_brief"}, "at least one proposal index"),
        ({"task": "region_brief", "targets": [100]}, "outside 0..99"),
        ({"task": "region_brief", "targets": [-1]}, "outside 0..99"),
        ({"task": "region_brief", "targets": ["3"]}, "proposal indices"),
        ({"task": "region_brief", "targets": [True]}, "proposal indices"),
        ({"task": "region_brief", "targets": [2, 2]}, "listed twice"),
        ({"task": "region_brief", "targets": [5], "num_boxes": 5}, "not below the number of proposals"),
        ({"task": "caption_brief", "targets": ["cat"]}, "takes no targets"),
        ({"task": "caption_detailed", "question": "hi"}, "takes no question"),
        ({"task": "chat"}, "non-empty question"),
        ({"task": "chat", "question": "  "}, "non-empty question"),
        ({"task": "chat", "question": "what is <obj2>?"}, "reserved token"),
        ({"task": "chat", "question": "x", "targets": ["cat"]}, "takes no targets"),
    ],
)
def test_bad_arguments_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=re.escape(message) if "'" in message else message):
        build_prompt(**kwargs)


def test_length_limits():
    longest = "a" * MAX_TEXT_CHARS
    assert build_prompt("chat", question=longest).endswith(longest)
    with pytest.raises(ValueError, match="limit is"):
        build_prompt("chat", question=longest + "a")
    with pytest.raises(ValueError, match="limit is"):
        build_prompt("detect", ["a" * 600, "b" * 600])  # each fits, joined they do not


def test_region_index_limit_is_inclusive():
    assert build_prompt("region_category", [MAX_BOX_INDEX], num_boxes=100).count("<obj99>") == 1


# --- parse_answer: the grammar ---------------------------------------------------------------------
CAPTION = "A <ground>man</ground><objects><obj2></objects> rides a <ground>horse</ground><objects><obj0></objects>."


def test_caption_groups_and_text():
    parsed = parse_answer(CAPTION, num_boxes=3)
    assert parsed.groups == (AnswerGroup("man", (2,)), AnswerGroup("horse", (0,)))
    assert parsed.text == "A man rides a horse."
    assert parsed.mentions == () and not parsed.truncated


def test_detection_answer_with_several_indices():
    parsed = parse_answer(
        "<ground>person</ground><objects><obj10><obj14></objects><ground>dog</ground><objects><obj3></objects>", 20
    )
    assert [(g.phrase, g.indices) for g in parsed.groups] == [("person", (10, 14)), ("dog", (3,))]
    assert parsed.all_indices == (10, 14, 3)
    # Adjacent groups (a detection list) must not run together as "persondog".
    assert parsed.text == "person; dog"


def test_repeated_phrase_gives_repeated_groups():
    parsed = parse_answer(
        "<ground>cup</ground><objects><obj1></objects> and <ground>cup</ground><objects><obj4><obj1></objects>", 5
    )
    assert [(g.phrase, g.indices) for g in parsed.groups] == [("cup", (1,)), ("cup", (4, 1))]
    assert parsed.all_indices == (1, 4)


def test_duplicates_within_group_removed_first_occurrence_kept():
    parsed = parse_answer("<ground>a</ground><objects><obj5><obj2><obj5><obj2><obj7></objects>", 8)
    assert parsed.groups[0].indices == (5, 2, 7)


def test_out_of_range_indices_are_dropped_in_order():
    parsed = parse_answer("<ground>a</ground><objects><obj9><obj1><obj3><obj9></objects>", 3)
    assert parsed.groups[0].indices == (1,)
    assert parsed.groups[0].dropped == (9, 3, 9)


def test_no_boxes_means_every_index_is_dropped():
    parsed = parse_answer("<ground>a</ground><objects><obj0></objects>", 0)
    assert parsed.groups == (AnswerGroup("a", (), (0,)),)


def test_spaced_variant_parses_like_compact():
    compact = parse_answer("I see <ground>a red mug</ground><objects><obj1><obj3></objects>.", 5)
    spaced = parse_answer("I see <ground> a red mug </ground> <objects> <obj1> <obj3> </objects>.", 5)
    assert spaced.groups == compact.groups
    assert spaced.text == compact.text == "I see a red mug."


def test_group_may_end_mid_word():
    parsed = parse_answer("white <ground>sneaker</ground><objects><obj0></objects>s on the floor", 1)
    assert parsed.text == "white sneakers on the floor"
    assert parsed.groups[0].phrase == "sneaker"


def test_phrase_whitespace_is_normalised():
    parsed = parse_answer("<ground>  red \n mug </ground><objects><obj0></objects>", 1)
    assert parsed.groups[0].phrase == "red mug"


def test_empty_objects_block_is_a_group_without_indices():
    parsed = parse_answer("<ground>unicorn</ground><objects></objects>", 4)
    assert parsed.groups == (AnswerGroup("unicorn", ()),)


def test_bare_index_tokens_are_mentions_not_groups():
    parsed = parse_answer("<obj0> shows a brown dog next to <obj2> and <obj0>; <obj7> is gone.", 3)
    assert parsed.groups == ()
    assert parsed.mentions == (0, 2)
    assert parsed.dropped_mentions == (7,)
    assert parsed.text == "shows a brown dog next to and ; is gone."


def test_refusal_is_plain_text():
    answer = "Sorry, I cannot find that object in the image."
    parsed = parse_answer(answer, 10)
    assert parsed.groups == () and parsed.mentions == () and parsed.text == answer


def test_line_breaks_survive_and_blank_runs_collapse():
    parsed = parse_answer("First  line.\n\n\n\n  Second <ground>line</ground><objects><obj0></objects>.  ", 1)
    assert parsed.text == "First line.\n\nSecond line."


def test_numbers_outside_the_vocabulary_are_text_outside_groups():
    parsed = parse_answer("a <obj100> b <obj007>", 200)
    assert parsed.groups == () and parsed.mentions == () and parsed.dropped_mentions == ()
    assert "<obj100>" in parsed.text and "<obj007>" in parsed.text


# --- parse_answer: out-of-range and malformed indices inside a group ---------------------------------
# One bad token must not void its group: the group's valid indices are kept, the bad ones reported.
@pytest.mark.parametrize(
    ("objects", "indices", "dropped"),
    [
        ("<obj150><obj1><obj2>", (1, 2), (150,)),  # first
        ("<obj1><obj150><obj2>", (1, 2), (150,)),  # middle
        ("<obj1><obj2><obj150>", (1, 2), (150,)),  # last
        ("<obj150><obj100><obj12>", (), (150, 100, 12)),  # all invalid: an empty group, not text
        ("<obj1><obj-1><obj2>", (1, 2), (-1,)),  # negative
        ("<obj1><obj-150><obj150><obj1>", (1,), (-150, 150)),
        ("<obj1><obj999999999999999999>", (1,), (999_999_999_999_999_999,)),  # 18 digits: still a number
        ("<obj9><obj10><obj11>", (9,), (10, 11)),  # just above the list given (10 boxes)
    ],
)
def test_out_of_range_index_keeps_the_group(objects, indices, dropped):
    parsed = parse_answer(f"I see <ground>a cat</ground><objects>{objects}</objects>.", 10)
    assert parsed.groups == (AnswerGroup("a cat", indices, dropped),)
    assert parsed.text == "I see a cat."
    assert parsed.dropped_indices == dropped and parsed.invalid_tokens == ()
    assert parsed.mentions == ()


@pytest.mark.parametrize(
    ("token", "reported"),
    [
        ("<obj007>", "<obj007>"),  # leading zeros: not how an index is written, so not read as 7
        ("<obj00>", "<obj00>"),
        ("<obj+3>", "<obj+3>"),
        ("<obj-0>", "<obj-0>"),
        ("<obj1234567890123456789>", "<obj1234567890123456789>"),  # 19 digits
        ("<obj" + "9" * 5000 + ">", "<obj" + "9" * 19 + "\u2026"),  # huge: shortened, never int() of it
    ],
)
def test_index_not_written_as_an_index_is_reported_as_written(token, reported):
    parsed = parse_answer(f"<ground>a</ground><objects><obj3>{token}<obj4></objects>", 5)
    assert parsed.groups == (AnswerGroup("a", (3, 4), (), (reported,)),)
    assert parsed.invalid_tokens == (reported,) and len(reported) <= 24
    assert parsed.text == "a"


def test_spaced_and_truncated_groups_keep_valid_indices_around_bad_ones():
    spaced = parse_answer("<ground> a </ground> <objects> <obj1> <obj150> <obj2> </objects>", 3)
    assert spaced.groups == (AnswerGroup("a", (1, 2), (150,)),)
    cut = parse_answer("<ground>a</ground><objects><obj1><obj150>", 3)
    assert cut.groups == (AnswerGroup("a", (1,), (150,)),) and cut.truncated


def test_resolution_with_bad_indices_uses_the_valid_ones():
    boxes = np.arange(12, dtype=np.float32).reshape(3, 4)
    parsed = parse_answer(
        "<ground>cup</ground><objects><obj2><obj150></objects><ground>dog</ground><objects><obj-1><obj0></objects>", 3
    )
    detections = resolve_detections(parsed, boxes, np.array([0.1, 0.2, 0.3]))
    assert [(d.label, d.proposal_index) for d in detections] == [("cup", 2), ("dog", 0)]
    assert parsed.dropped_indices == (150, -1)


def test_ignored_summary_names_every_ignored_token():
    parsed = parse_answer("<ground>a</ground><objects><obj1><obj150><obj007></objects> and <obj9>", 3)
    assert parsed.dropped_indices == (150, 9) and parsed.invalid_tokens == ("<obj007>",)
    assert parsed.ignored_summary() == (
        "ignored 3 object index tokens naming none of the 3 proposals: <obj150>, <obj9>, <obj007>"
    )
    assert parse_answer("<ground>a</ground><objects><obj1></objects>", 3).ignored_summary() == ""
    many = parse_answer("<ground>a</ground><objects>" + "<obj150>" * 30 + "</objects>", 3)
    assert many.ignored_summary(max_listed=2).endswith(": <obj150>, <obj150> and 28 more")
    assert many.ignored_summary(max_listed=0).endswith(": 30 tokens")


# --- parse_answer: malformed and truncated answers -----------------------------------------------
def test_objects_block_cut_by_end_of_text_keeps_written_indices():
    parsed = parse_answer("<ground>dog</ground><objects><obj1><obj2>", 3)
    assert parsed.groups == (AnswerGroup("dog", (1, 2)),)
    assert parsed.truncated
    assert parsed.text == "dog"


@pytest.mark.parametrize("answer", ["a <ground>dog", "a <ground>dog</ground>", "a <ground>dog</ground> <objects>"])
def test_unterminated_group_has_no_invented_indices(answer):
    parsed = parse_answer(answer, 5)
    assert all(group.indices == () for group in parsed.groups)
    assert parsed.all_indices == ()
    assert parsed.truncated
    assert parsed.text == "a dog"


def test_group_without_objects_block_is_text():
    parsed = parse_answer("a <ground>dog</ground> runs past <obj2>", 5)
    assert parsed.groups == ()
    assert parsed.mentions == (2,)
    assert parsed.text == "a dog runs past"
    assert not parsed.truncated


def test_objects_interrupted_by_text_is_not_a_group():
    parsed = parse_answer("<ground>dog</ground><objects><obj1> and then <obj2></objects>", 5)
    assert parsed.groups == ()
    assert parsed.mentions == (1, 2)


def test_special_token_inside_phrase_is_not_a_group():
    parsed = parse_answer("<ground>a <obj1> dog</ground><objects><obj2></objects>", 5)
    assert parsed.groups == ()
    assert parsed.mentions == (1, 2)


def test_nested_ground_keeps_only_the_well_formed_inner_group():
    parsed = parse_answer("<ground>big <ground>dog</ground><objects><obj3></objects>", 5)
    assert parsed.groups == (AnswerGroup("dog", (3,)),)
    assert parsed.text == "big dog"


def test_orphan_objects_block_gives_mentions():
    parsed = parse_answer("look: <objects><obj4></objects>", 5)
    assert parsed.groups == () and parsed.mentions == (4,) and parsed.text == "look:"


def test_token_halves_joined_by_removal_are_removed_too():
    parsed = parse_answer("x<obj<obj<obj<obj1>1>1>1>y <gro<gro<ground>und>und>", 5)
    assert not contains_special_token(parsed.text)
    assert parsed.text == "xy"
    assert parsed.mentions == (1,)  # only the real token counts as a mention


@pytest.mark.parametrize("num_boxes", [-1, 1.5, "3", True, None])
def test_bad_num_boxes_raises(num_boxes):
    with pytest.raises(ValueError, match="num_boxes"):
        parse_answer("<obj1>", num_boxes)


def test_non_string_answer_raises():
    with pytest.raises(ValueError, match="must be a str"):
        parse_answer(None, 3)  # type: ignore[arg-type]


def test_results_are_immutable():
    parsed = parse_answer(CAPTION, 3)
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.text = "x"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        parsed.groups[0].indices = ()  # type: ignore[misc]
    assert isinstance(parsed.groups, tuple)


# --- resolve_detections ----------------------------------------------------------------------------
BOXES = np.array([[0, 0, 10, 10], [5, 5, 20, 20], [1, 2, 3, 4]], dtype=np.float32)
SCORES = np.array([0.9, 0.5, 0.4], dtype=np.float32)


def test_resolution_one_detection_per_group_and_index():
    parsed = parse_answer(
        "<ground>cup</ground><objects><obj2><obj0></objects><ground>cup</ground><objects><obj2></objects>", 3
    )
    detections = resolve_detections(parsed, BOXES, SCORES)
    assert [(d.label, d.proposal_index) for d in detections] == [("cup", 2), ("cup", 0), ("cup", 2)]
    assert detections[0].box == (1.0, 2.0, 3.0, 4.0)
    assert detections[1].score == pytest.approx(0.9)
    assert all(isinstance(v, float) for d in detections for v in (*d.box, d.score))
    assert isinstance(detections[0], Detection)


def test_resolution_skips_dropped_indices_and_mentions_by_default():
    parsed = parse_answer("<obj1> is a <ground>dog</ground><objects><obj7><obj0></objects>", 3)
    assert [d.proposal_index for d in resolve_detections(parsed, BOXES, SCORES)] == [0]
    with_mentions = resolve_detections(parsed, BOXES, SCORES, include_mentions=True)
    assert [(d.label, d.proposal_index) for d in with_mentions] == [("dog", 0), ("", 1)]


def test_resolution_of_a_refusal_is_empty():
    assert resolve_detections(parse_answer("No.", 0), np.zeros((0, 4)), np.zeros(0)) == []


def test_resolution_refuses_a_different_box_list():
    parsed = parse_answer("<ground>a</ground><objects><obj0></objects>", 3)
    with pytest.raises(ValueError, match="parsed against 3 boxes but 2"):
        resolve_detections(parsed, BOXES[:2], SCORES[:2])
    with pytest.raises(ValueError, match=r"shape \(N, 4\)"):
        resolve_detections(parsed, BOXES[:, :3], SCORES)
    with pytest.raises(ValueError, match="scores must have shape"):
        resolve_detections(parsed, BOXES, SCORES[:2])
    with pytest.raises(ValueError, match="ParsedAnswer"):
        resolve_detections("<obj0>", BOXES, SCORES)  # type: ignore[arg-type]


# --- properties ------------------------------------------------------------------------------------
FRAGMENTS = [
    "<ground>",
    "</ground>",
    "<objects>",
    "</objects>",
    "<obj0>",
    "<obj1>",
    "<obj7>",
    "<obj42>",
    "<obj99>",
    "<obj100>",
    "<obj150>",
    "<obj-1>",
    "<obj007>",
    "<obj+2>",
    "<obj",
    "obj3>",
    "<",
    ">",
    "/",
    "ground",
    "objects",
    " ",
    "\n",
    "a",
    "dog",
    "9",
    "<ground >",
]
adversarial_text = st.lists(st.one_of(st.sampled_from(FRAGMENTS), st.text(max_size=6)), max_size=40).map("".join)


@settings(max_examples=400, deadline=None)
@given(text=st.one_of(st.text(max_size=200), adversarial_text), num_boxes=st.integers(0, 120))
def test_parse_never_raises_and_never_invents(text, num_boxes):
    parsed = parse_answer(text, num_boxes)

    assert not contains_special_token(parsed.text)
    assert parsed.text == parsed.text.strip()
    for group in parsed.groups:
        assert not contains_special_token(group.phrase)
        assert group.phrase == group.phrase.strip()
        assert all(0 <= k < num_boxes for k in group.indices)
        assert all(k >= num_boxes or k < 0 for k in group.dropped)
        assert all(not re.fullmatch(r"<obj(0|-?[1-9]\d{0,17})>", t[:24]) for t in group.invalid)
        assert len(set(group.indices)) == len(group.indices)
    assert all(0 <= k < num_boxes for k in parsed.mentions)
    assert all(k >= num_boxes for k in parsed.dropped_mentions)
    assert len(set(parsed.all_indices)) == len(parsed.all_indices)
    assert set(parsed.all_indices) == {k for g in parsed.groups for k in g.indices}

    # No invented indices: every index reported is backed by its own <objK> token in the raw text.
    written: dict[int, int] = {}
    for digits in re.findall(r"<obj(-?\d+)>", text):
        written[int(digits)] = written.get(int(digits), 0) + 1
    reported: dict[int, int] = {}
    for group in parsed.groups:
        for k in (*group.indices, *group.dropped):
            reported[k] = reported.get(k, 0) + 1
    for k in parsed.mentions:
        reported[k] = reported.get(k, 0) + 1
    assert all(count <= written.get(k, 0) for k, count in reported.items())


plain_words = st.text(alphabet=st.characters(blacklist_characters="<>", blacklist_categories=("Cs",)), max_size=12)
group_parts = st.tuples(plain_words.filter(str.strip), st.lists(st.integers(0, 99), max_size=6))
answer_items = st.lists(st.one_of(plain_words.map(lambda w: ("text", w)), group_parts.map(lambda g: ("group", g))))


@settings(max_examples=300, deadline=None)
@given(items=answer_items, num_boxes=st.integers(0, 100), spaced=st.booleans())
def test_well_formed_answers_round_trip(items, num_boxes, spaced):
    pieces, expected = [], []
    for kind, value in items:
        if kind == "text":
            pieces.append(value)
            continue
        phrase, indices = value
        objects = (" " if spaced else "").join(f"<obj{k}>" for k in indices)
        if spaced:
            pieces.append(f"<ground> {phrase} </ground> <objects> {objects} </objects>")
        else:
            pieces.append(f"<ground>{phrase}</ground><objects>{objects}</objects>")
        expected.append(
            AnswerGroup(
                " ".join(phrase.split()),
                tuple(dict.fromkeys(k for k in indices if k < num_boxes)),
                tuple(k for k in indices if k >= num_boxes),
            )
        )
    parsed = parse_answer("".join(pieces), num_boxes)
    assert parsed.groups == tuple(expected)
    assert parsed.mentions == () and not parsed.truncated
    squashed = parsed.text.replace(" ", "").replace("\n", "")
    for group in expected:
        assert group.phrase.replace(" ", "") in squashed
