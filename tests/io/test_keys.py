"""The key-rule tables: one per format, read in both directions, a bijection on every real tensor name."""

import pytest
import torch

from higgslab.io import codec_format, lm_format
from higgslab.io.keys import to_disk, to_ours


def test_templates_match_whole_components_and_first_rule_wins():
    rules = [("a.{q}.embed", "x.{q}.codebook"), ("a.{rest*}", "x.{rest*}")]
    assert to_ours("a.3.embed", rules) == "x.3.codebook"
    assert to_ours("a.3.embed.more", rules) == "x.3.embed.more"  # `{q}` is one component: rule 2 applies
    assert to_disk("x.3.codebook", rules) == "a.3.embed"
    assert to_disk("y.3", rules) == "y.3"  # no rule: unchanged
    assert to_ours("ab.3", rules) == "ab.3"  # literal dots: "a." does not match "ab."


def check_bijection(ours_keys, disk_keys, rules):
    assert {to_disk(k, rules) for k in ours_keys} == set(disk_keys)
    assert {to_ours(k, rules) for k in disk_keys} == set(ours_keys)
    assert all(to_ours(to_disk(k, rules), rules) == k for k in ours_keys)


@pytest.mark.parametrize("fmt", ["original", "transformers"])
def test_lm_rules_map_the_files_names_onto_the_models(lm_checkpoints, fmt):
    from higgslab.io.load import load_model

    disk, _ = lm_format.read_weights(lm_checkpoints[fmt])
    model = load_model(lm_checkpoints[fmt])
    check_bijection(model.state_dict().keys(), disk.keys(), lm_format.KEY_RULES[fmt])


@pytest.mark.parametrize("fmt", ["original", "transformers"])
def test_codec_rules_map_the_files_names_onto_the_models(tmp_path, fmt):
    from higgslab.io.load import load_tokenizer
    from higgslab.tiny.tokenizer import write_tiny_tokenizer

    directory = write_tiny_tokenizer(tmp_path / fmt, fmt)
    weights = directory / codec_format.LAYOUTS[fmt]
    disk = codec_format.fold_weight_norm(codec_format.read_state_dict(weights), weights)
    used = [k for k in disk if not codec_format.UNUSED.match(k)]
    assert any(k.startswith("decoder_semantic.") for k in disk)  # the unused ones are there, and dropped
    model = load_tokenizer(directory).model
    rules = codec_format.key_rules(fmt, len(model.cfg.ratios))
    check_bijection(model.state_dict().keys(), used, rules)
    if fmt == "original":  # spot checks against FORMATS.md §3
        assert to_disk("acoustic_decoder.block.2.res_unit3.conv2.weight", rules) == (
            "decoder_2.model.3.block.4.block.3.weight"
        )
        assert to_disk("encoder_semantic.conv_blocks.1.conv.bias", rules) == (
            "encoder_semantic.conv_blocks.1.conv.conv.bias"
        )


def test_codec_without_semantic_branch_has_no_transformers_layout(tmp_path):
    from higgslab.errors import HiggsLabError
    from higgslab.train.codec import mini_codec

    with pytest.raises(HiggsLabError, match="transformers tokenizer layout needs a semantic branch"):
        codec_format.write_codec(mini_codec(0), tmp_path / "t", "transformers")
    assert not (tmp_path / "t").exists()
    directory = codec_format.write_codec(mini_codec(0), tmp_path / "o", "original")
    assert (
        torch.load(directory / "model.pth", weights_only=True)
        .keys()
        .isdisjoint({"semantic_model.feature_projection.projection.weight", "fc_post1.weight"})
    )
