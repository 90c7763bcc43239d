"""Our UPN against the reference: state-dict manifest of upn_large, and the tiny variant's golden tensors.

The golden file (test/data/upn/, copied from the reference data) was made with the upstream code on the
CPU; tolerances are those its README section 5 derives from run-to-run / fp64-vs-fp32 differences.
"""

from __future__ import annotations

import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from chatrex_ros.core.proposals import select_proposals
from chatrex_ros.models.upn.checkpoint import load_upn_weights, normalise_state_dict
from chatrex_ros.models.upn.config import resolve_config
from chatrex_ros.models.upn.model import build_upn

DATA = Path(__file__).parent / "data" / "upn"
WEIGHTS = DATA / "tiny_state_dict.safetensors"
CASES = ("astronaut", "coffee")
PROMPTS = ("fine", "coarse")


@pytest.fixture(scope="module")
def golden() -> dict[str, np.ndarray]:
    with np.load(DATA / "tiny_golden.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="module")
def tiny():
    return load_upn_weights(build_upn("tiny"), str(WEIGHTS))


@pytest.fixture(scope="module")
def traces(tiny, golden):
    """One traced forward per (image, prompt): the stage-by-stage tests below share them."""
    out = {}
    with torch.no_grad():
        for case in CASES:
            pixels = torch.from_numpy(golden[f"{case}__input"])
            for prompt in PROMPTS:
                out[case, prompt] = {
                    k: v.numpy() if torch.is_tensor(v) else v for k, v in tiny.trace(pixels, prompt).items()
                }
    return out


def first_tokens(tokens: np.ndarray, starts: np.ndarray, count: int = 4) -> np.ndarray:
    return np.stack([tokens[:, s : s + count] for s in starts], axis=1)


# --- large: the official checkpoint's key set ---------------------------------------------------------


def test_large_state_dict_matches_the_manifest_key_by_key():
    model = build_upn("large", device="meta")
    state = model.state_dict()
    with open(DATA / "upn_large_state_dict.tsv", newline="") as handle:
        rows = list(csv.DictReader(handle, delimiter="\t"))
    assert len(rows) == 701
    assert list(state) == [r["name"] for r in rows]  # same keys, same order
    for row in rows:
        tensor = state[row["name"]]
        assert "x".join(str(d) for d in tensor.shape) == row["shape"], row["name"]
        assert str(tensor.dtype).removeprefix("torch.") == row["dtype"], row["name"]
    unique = sum(p.numel() for p in model.parameters())  # aliases counted once
    assert unique == 217_638_460


def test_large_box_head_aliases_are_one_module():
    model = build_upn("large", device="meta")
    heads = list(model.bbox_embed) + list(model.transformer.decoder.bbox_embed)
    assert len(heads) == 12 and all(h is heads[0] for h in heads)
    assert model.transformer.enc_out_bbox_embed is not heads[0]


def test_reference_config_dict_builds_the_same_tiny_architecture():
    config = resolve_config(json.loads((DATA / "tiny_config.json").read_text()))
    preset = resolve_config("tiny")
    assert config.to_dict() | {"name": "tiny"} == preset.to_dict()
    with pytest.raises(ValueError, match="architecture"):
        resolve_config({"name": "broken"})
    with pytest.raises(ValueError, match="unknown UPN variant"):
        resolve_config("huge")


# --- tiny: golden numerics, stage by stage -------------------------------------------------------------


@pytest.mark.parametrize("case", CASES)
def test_backbone_and_flattening_match(traces, golden, case):
    trace = traces[case, "fine"]
    for i in range(4):
        np.testing.assert_allclose(trace[f"backbone_feat{i}"], golden[f"{case}__backbone_feat{i}"], atol=1e-4, rtol=0)
    assert [list(s) for s in trace["level_shapes"]] == golden[f"{case}__spatial_shapes"].tolist()
    starts = golden[f"{case}__level_start_index"]
    np.testing.assert_allclose(
        first_tokens(trace["src_flatten"], starts), golden[f"{case}__src_flatten_lvl_first4tok"], atol=1e-4, rtol=0
    )
    np.testing.assert_allclose(
        first_tokens(trace["lvl_pos_embed"], starts), golden[f"{case}__lvl_pos_embed_lvl_first4tok"], atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(
        first_tokens(trace["memory"], starts), golden[f"{case}__memory_lvl_first4tok"], atol=1e-4, rtol=0
    )
    memory = trace["memory"].astype(np.float64)
    stats = [memory.mean(), memory.std(ddof=1), np.abs(memory).max()]
    np.testing.assert_allclose(stats, golden[f"{case}__memory_stats_mean_std_absmax"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(trace["enc_proposal_valid"], golden[f"{case}__enc_proposal_valid"])


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("case", CASES)
def test_selection_decoder_and_outputs_match(traces, golden, case, prompt):
    trace, key = traces[case, prompt], f"{case}__{prompt}__"
    np.testing.assert_allclose(trace["enc_logits"], golden[key + "enc_logits"], atol=1e-4, rtol=0)
    np.testing.assert_array_equal(trace["enc_topk_indices"], golden[key + "enc_topk_indices"])
    np.testing.assert_allclose(
        trace["dec_init_refpoint_unsig"], golden[key + "dec_init_refpoint_unsig"], atol=1e-5, rtol=0
    )
    np.testing.assert_allclose(trace["dec_references"], golden[key + "dec_references"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(trace["dec_hs"], golden[key + "dec_hs"], atol=1e-4, rtol=0)
    np.testing.assert_allclose(trace["pred_boxes"], golden[key + "pred_boxes"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(trace["pred_logits"], golden[key + "pred_logits"], atol=1e-4, rtol=0)


@pytest.mark.parametrize("prompt", PROMPTS)
@pytest.mark.parametrize("case", CASES)
def test_filtered_proposals_equal_the_reference_filter(traces, golden, case, prompt):
    """Same post-processing as the reference (xyxy in original pixels, score >= 0.3, NMS 0.8), same boxes."""
    from chatrex_ros.models.upn.processing import decode_outputs

    trace, key = traces[case, prompt], f"{case}__{prompt}__"
    raw = decode_outputs(trace["pred_boxes"][0], trace["pred_logits"][0], tuple(golden[f"{case}__original_hw"][0]))
    order = golden[key + "post_order"][0]
    np.testing.assert_allclose(raw.boxes[order], golden[key + "post_boxes_xyxy"][0], atol=1e-2, rtol=0)
    np.testing.assert_allclose(raw.scores[order], golden[key + "post_scores"][0, :, 0], atol=1e-4, rtol=0)
    keep = select_proposals(raw.boxes, raw.scores, min_score=0.3, nms_iou=0.8, max_count=100)
    expected_boxes, expected_scores = golden[key + "filt_s030_n080_boxes"], golden[key + "filt_s030_n080_scores"]
    assert len(keep) == len(expected_boxes)
    ours = raw.boxes[keep].astype(np.int32)
    # compare as sets (row-sorted): near-equal scores may swap places
    np.testing.assert_allclose(np.sort(ours, axis=0), np.sort(expected_boxes, axis=0), atol=1)
    np.testing.assert_allclose(np.sort(raw.scores[keep]), np.sort(expected_scores), atol=0.01)


def test_padded_batch_matches_with_mask(tiny, golden):
    """batch2: both images zero-padded to 400x559 with a padding mask (valid ratios, masked proposals)."""
    pixels = np.zeros((2, 3, 400, 559), dtype=np.float32)
    mask = np.ones((2, 400, 559), dtype=bool)
    for i, case in enumerate(CASES):
        image = golden[f"{case}__input"][0]
        pixels[i, :, : image.shape[1], : image.shape[2]] = image
        mask[i, : image.shape[1], : image.shape[2]] = False
    with torch.no_grad():
        trace = tiny.trace(torch.from_numpy(pixels), "coarse", torch.from_numpy(mask))
    np.testing.assert_array_equal(trace["valid_ratios"].numpy(), golden["batch2__valid_ratios"])
    np.testing.assert_array_equal(trace["enc_proposal_valid"].numpy(), golden["batch2__enc_proposal_valid"])
    np.testing.assert_array_equal(trace["enc_topk_indices"].numpy(), golden["batch2__coarse__enc_topk_indices"])
    np.testing.assert_allclose(trace["pred_boxes"].numpy(), golden["batch2__coarse__pred_boxes"], atol=1e-5, rtol=0)
    np.testing.assert_allclose(trace["pred_logits"].numpy(), golden["batch2__coarse__pred_logits"], atol=1e-4, rtol=0)


def test_bad_inputs_fail_with_clear_errors(tiny):
    with pytest.raises(ValueError, match="unknown UPN prompt"):
        tiny(torch.zeros(1, 3, 64, 64), prompt="medium")
    with pytest.raises(ValueError, match=r"\(B, 3, H, W\)"):
        tiny(torch.zeros(1, 4, 64, 64))
    with pytest.raises(ValueError, match="mask must be bool"):
        tiny(torch.zeros(1, 3, 64, 64), mask=torch.zeros(1, 64, 64))


# --- checkpoint loading --------------------------------------------------------------------------------


def official_style_checkpoint(tmp_path: Path, state: dict[str, torch.Tensor]) -> Path:
    path = tmp_path / "upn.pth"
    torch.save({"model": state, "epoch": 11}, path)
    return path


def test_pth_loads_strictly_without_buffers_and_with_extra_keys(tmp_path, tiny):
    state = {k: v.clone() for k, v in tiny.state_dict().items() if not k.endswith("relative_position_index")}
    state["label_enc.weight"] = torch.zeros(3)  # a training-time leftover
    path = official_style_checkpoint(tmp_path, state)
    fresh = load_upn_weights(build_upn("tiny"), str(path))
    for key, value in tiny.state_dict().items():
        assert torch.equal(fresh.state_dict()[key], value), key


def test_pth_with_only_one_alias_name_fills_the_others(tmp_path, tiny):
    state = {k: v.clone() for k, v in tiny.state_dict().items() if not k.startswith("bbox_embed.")}
    fresh = load_upn_weights(build_upn("tiny"), str(official_style_checkpoint(tmp_path, state)))
    assert torch.equal(fresh.bbox_embed[1].layers[2].weight, tiny.transformer.decoder.bbox_embed[0].layers[2].weight)


def test_checkpoint_problems_are_reported(tmp_path, tiny):
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    missing = dict(state)
    del missing["transformer.tgt_embed.weight"]
    with pytest.raises(ValueError, match="tgt_embed"):
        load_upn_weights(build_upn("tiny"), str(official_style_checkpoint(tmp_path, missing)))
    inconsistent = dict(state)
    inconsistent["bbox_embed.1.layers.0.bias"] = inconsistent["bbox_embed.1.layers.0.bias"] + 1
    with pytest.raises(ValueError, match="alias"):
        normalise_state_dict(build_upn("tiny"), inconsistent)
    with pytest.raises(ValueError, match="does not fit"):
        load_upn_weights(build_upn(replace(resolve_config("tiny"), num_queries=50)), str(WEIGHTS))
    with pytest.raises(FileNotFoundError, match="upn-large"):
        load_upn_weights(tiny, str(tmp_path / "absent.pth"))
