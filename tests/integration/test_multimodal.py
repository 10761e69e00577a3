"""One model for images, audio and video: the tiny three-modality recipe end to end, every direction."""

import json
import math
from dataclasses import replace

import pytest
import torch
import yaml

from tests.helpers import TINY_SPEC, TINY_VIDEO_SPEC, write_tiny_multimodal_recipe, write_tiny_recipe
from unitok import UniTokPipeline
from unitok.cli import main
from unitok.core.config import ConfigError
from unitok.lm.batch import collate
from unitok.lm.model import ModelSpec, batch_logits, build_transformer, media_modules
from unitok.lm.reader import ReaderSpec
from unitok.lm.streams import StreamBuilder
from unitok.recipe.schema import load_recipe
from unitok.recipe.stages import RecipeRun
from unitok.tokenizer.adapters.audio import Audio
from unitok.tokenizer.media_tokenizer import MediaTokenizer


def test_every_direction_is_evaluated(tiny_multimodal_run):
    metrics = json.loads((tiny_multimodal_run / "metrics.json").read_text())
    assert 0 <= metrics["audio_tokenizer"]["dtmf_roundtrip_accuracy"] <= 1
    assert 0 <= metrics["text_to_audio"]["dtmf_sequence_accuracy"] <= 1
    assert 0 <= metrics["audio_to_text"]["digit_accuracy"] <= 1
    assert 0 <= metrics["image_to_text"]["digit_color_accuracy"] <= metrics["image_to_text"]["digit_accuracy"]
    assert "digit_accuracy" in metrics["text_to_image"] and "psnr_db" in metrics["image_tokenizer"]
    for key in ("digit_accuracy", "direction_accuracy", "color_accuracy"):
        assert 0 <= metrics["text_to_video"][key] <= 1
    assert 0 <= metrics["video_to_text"]["digit_direction_accuracy"] <= 1
    assert 0 <= metrics["video_tokenizer"]["recon_digit_direction_accuracy"] <= 1
    for modality in ("image", "audio", "video"):  # the held-out captions differ, so their CE does
        read = metrics[f"{modality}_to_text"]
        assert math.isfinite(gain := read["caption_ce_gain_from_media"]) and gain != 0
        assert gain == pytest.approx(read["caption_loss_shuffled"] - read["caption_loss_matched"])
    assert set(metrics["lm"]["heldout_loss_per_task"]) == {"text_to_image", "image_to_text", "text_to_audio",
                                                           "audio_to_text", "text_to_video", "video_to_text", "text"}
    for path in ("samples.png", "trajectory.png", "audio_samples.png", "audio_trajectory.png",
                 "audio_samples/sample-0.wav",
                 "video_samples.png", "video_trajectory.png", "video_samples/sample-0.gif",
                 "model/audio_tokenizer/model.safetensors", "model/video_tokenizer/model.safetensors",
                 "shards/audio/heldout/manifest.json", "data/video/train/videos/train-000000.mp4"):
        assert (tiny_multimodal_run / path).is_file(), path


def test_one_vocabulary_holds_the_three_codebooks(tiny_multimodal_run):
    pipe = UniTokPipeline.from_pretrained(tiny_multimodal_run / "model")
    media = {r.name: r for r in pipe.vocabulary.media_ranges()}
    assert set(media) == {"image", "audio", "video"} and all(r.modality == name for name, r in media.items())
    spans = [set(range(r.offset, r.end)) for r in pipe.vocabulary.ranges]
    assert sum(map(len, spans)) == len(set().union(*spans)) == pipe.vocabulary.size
    assert media["audio"].size == pipe.tokenizer_for("audio").codebook_size


def test_pipeline_generates_audio_and_describes_both_modalities(tiny_multimodal_run, tmp_path):
    pipe = UniTokPipeline.from_pretrained(tiny_multimodal_run / "model")
    out = pipe.text_to_audio("dial 4 7", seed=0)
    assert out.token_ids.shape[0] == 1 and out.token_ids.max() < pipe.tokenizer_for("audio").codebook_size
    (path,) = out.save(tmp_path / "dial47.wav")
    adapter = pipe.tokenizer_for("audio").adapter
    assert isinstance(adapter.load(path), Audio)
    again = pipe.text_to_audio("dial 4 7", seed=0)
    assert torch.equal(out.token_ids, again.token_ids), "same seed, same clip"

    caption = pipe.audio_to_text(str(path))
    assert isinstance(caption, str)
    assert pipe.audio_to_text([str(path), str(path)]) == [caption, caption], "every item its own seed: 0"
    image = pipe.text_to_image("a red 7", seed=0).images[0]
    assert isinstance(pipe.image_to_text(image), str)
    clip = pipe.text_to_video("a blue 3 moving right", seed=0)
    assert clip.videos[0].frames.shape == (4, 32, 32, 3)
    mp4, gif = clip.save(tmp_path / "three.mp4")[0], clip.save(tmp_path / "three.gif")[0]
    assert gif.is_file() and isinstance(pipe.video_to_text(str(mp4)), str)


def test_a_caption_reads_the_media_through_the_read_out_block(tiny_multimodal_run):
    """The caption's logits after two different images differ (the text sees their read-out
    blocks), and an interleaved prompt is continued through the same layout."""
    pipe = UniTokPipeline.from_pretrained(tiny_multimodal_run / "model")
    images = pipe.text_to_image(["a red 7", "a big blue 1 at the top"], seed=0).images
    assert pipe.layout.readout_patch == 3, "the recipe's read-out neighbourhood is saved with the pipeline"
    tokenizer, vocab = pipe.tokenizer_for("image"), pipe.vocabulary
    caption = pipe.encode_prompt("a red 7")
    docs = [StreamBuilder(vocab, "timestep").special("<bos>").read_out("image", states).text(caption).build()
            for states in pipe._readout_states(tokenizer, images, [0, 0])]
    with torch.no_grad():
        logits = batch_logits(pipe.model, collate([[d] for d in docs], pad_id=0))
    eoi = docs[0].input_ids.index(vocab.special_id("<eoi>"))
    assert not torch.allclose(logits[0, eoi:], logits[1, eoi:], atol=1e-4), "the caption depends on the media"
    assert torch.equal(logits[0, :eoi - tokenizer.num_positions], logits[1, :eoi - tokenizer.num_positions])
    text = pipe.continue_text(["a red 7", images[0], "in other words:"], max_new_tokens=4)
    assert isinstance(text, str) and text == pipe.continue_text(["a red 7", images[0], "in other words:"],
                                                                max_new_tokens=4), "same seed, same text"
    with pytest.raises(ValueError, match="no tokenizer of this pipeline reads a dict"):
        pipe.continue_text(["a red 7", {"not": "media"}])


def test_media_modules_are_saved_with_the_pipeline_and_reload_to_the_same_outputs(tiny_run, tmp_path):
    """Conv readers and code geometry heads, with weights as training leaves them: the reloaded
    pipeline draws the same codes and writes the same captions; a pipeline without them is refused."""
    trained = UniTokPipeline.from_pretrained(tiny_run / "model")
    layout = replace(trained.layout, reader=ReaderSpec("conv", channels=8, pool=2), code_geometry=True)
    vocab = trained.vocabulary.with_state_widths(layout.readout_width)
    torch.manual_seed(0)
    transformer = build_transformer(ModelSpec(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), vocab)
    pipe = UniTokPipeline(transformer, trained.text_tokenizer, trained.media_tokenizers, vocab, layout,
                          **media_modules(layout, vocab, trained.media_tokenizers, 32))
    torch.nn.init.normal_(pipe.model.readers["image"].to_hidden.weight, std=0.5)
    torch.nn.init.normal_(pipe.model.code_heads["image"].to_latent.weight, std=0.5)
    prompts = ["a red 7", "a big blue 1 at the top"]
    drawn = pipe.text_to_image(prompts, seed=0).token_ids
    images = trained.text_to_image(prompts, seed=0).images
    captions = pipe.image_to_text(images, max_new_tokens=6)
    pipe.save_pretrained(tmp_path / "modules")
    reloaded = UniTokPipeline.from_pretrained(tmp_path / "modules")
    assert reloaded.layout == pipe.layout and set(reloaded.model.code_heads) == {"image"}
    assert torch.equal(reloaded.text_to_image(prompts, seed=0).token_ids, drawn)
    assert reloaded.image_to_text(images, max_new_tokens=6) == captions
    (tmp_path / "modules" / "transformer" / "media_modules.safetensors").unlink()
    with pytest.raises(ValueError, match="media_modules.safetensors: missing"):
        UniTokPipeline.from_pretrained(tmp_path / "modules")
    with pytest.raises(ValueError, match=r"readers: a conv layout needs conv readers for \['image'\], got \[\]"):
        UniTokPipeline(transformer, trained.text_tokenizer, trained.media_tokenizers, vocab, layout)
    readers = {"readers": dict(pipe.model.readers)}
    with pytest.raises(ValueError, match=r"code_heads: a layout with code_geometry True needs code geometry heads "
                                         r"for \['image'\], got \[\]"):
        UniTokPipeline(transformer, trained.text_tokenizer, trained.media_tokenizers, vocab, layout, **readers)


def test_generate_cli_for_audio_and_media_to_text(tiny_multimodal_run, tmp_path, capsys):
    model = str(tiny_multimodal_run / "model")
    wav = tmp_path / "tones.wav"
    assert main(["generate", model, "--modality", "audio", "--prompt", "dial 1 2", "--out", str(wav)]) == 0
    assert wav.is_file()
    assert main(["generate", model, "--modality", "text", "--input", str(wav)]) == 0
    assert capsys.readouterr().out.splitlines()[-1].split("\t")[0] == str(wav), "FILE<tab>caption"
    assert main(["generate", model, "--modality", "text", "--input", str(tmp_path / "x.xyz")]) == 1
    assert "no tokenizer of this pipeline reads .xyz files" in capsys.readouterr().err
    assert main(["generate", model, "--modality", "audio", "--prompt", "dial 1"]) == 1
    assert "pass --prompt TEXT and --out FILE" in capsys.readouterr().err


def test_recipe_refuses_a_task_without_its_tokenizer_and_a_spec_of_another_modality(tmp_path):
    path = write_tiny_multimodal_recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    del recipe["tokenizers"]["video"]
    path.write_text(yaml.safe_dump(recipe))
    with pytest.raises(ConfigError, match="lm.tasks: text_to_video needs a video tokenizer"):
        load_recipe(path)
    path = write_tiny_multimodal_recipe(tmp_path)
    recipe = path.read_text().replace("tiny-audio.yaml", "tiny-tokenizer.yaml")
    path.write_text(recipe)
    with pytest.raises(ConfigError, match="tokenizers.audio: the spec .* is for image, not audio"):
        load_recipe(path)


def test_tokenize_cli_takes_audio_and_video_folders(tiny_multimodal_run, tmp_path, capsys):
    import datasets

    model = str(tiny_multimodal_run / "model")
    for modality in ("audio", "video"):
        source = tiny_multimodal_run / "data" / modality / "heldout"
        out = tmp_path / modality
        assert main(["tokenize", "--tokenizer", model, "--input", str(source), "--modality", modality,
                     "--out", str(out)]) == 0
        rows = datasets.load_dataset("parquet", data_files=str(out / "shard-*.parquet"), split="train")
        assert len(rows) == 8 and set(rows["media"]) == {modality}
    assert main(["tokenize", "--tokenizer", model, "--input", str(source), "--out", str(tmp_path / "x")]) == 1
    assert "tokenizers: pass --modality" in capsys.readouterr().err


def test_clips_coded_by_the_image_tokenizer_train_with_the_image_code_rows(tmp_path):
    """`tokenizers.video.frames_from: image` and `layout.tied_codes: {video: image}`: the video
    tokenizer is the trained image one on every frame (nothing trained), and the transformer reads
    and draws clip codes through the image code rows."""
    path = write_tiny_recipe(tmp_path)
    recipe = yaml.safe_load(path.read_text())
    spec = {**TINY_VIDEO_SPEC, "autoencoder": {**TINY_SPEC["autoencoder"], "per_frame": True},
            "quantizer": TINY_SPEC["quantizer"]}
    (tmp_path / "frames.yaml").write_text(yaml.safe_dump(spec))
    recipe["data"]["video"] = {"digits_world": {"train_clips": 32, "heldout_clips": 8, "frames": 4}}
    recipe["tokenizers"]["video"] = {"spec": str(tmp_path / "frames.yaml"), "frames_from": "image"}
    recipe["lm"]["tasks"] = {"text_to_image": 1.0, "text_to_video": 1.0, "video_to_text": 0.5}
    recipe["layout"] = {"decode": {"image": {"groups": [2, 1, 1, 1]}, "video": {"groups": [2, 1, 1, 1]}},
                        "tied_codes": {"video": "image"}}
    path.write_text(yaml.safe_dump(recipe))
    RecipeRun(load_recipe(path), log=lambda _: None).run(stop_after="pipeline")
    run = tmp_path / "run"
    image, video = (MediaTokenizer.from_pretrained(run / "tokenizers" / m) for m in ("image", "video"))
    assert image.state_dict().keys() == video.state_dict().keys()
    assert all(torch.equal(w, video.state_dict()[k]) for k, w in image.state_dict().items())
    assert json.loads((run / "tokenizers" / "video" / "metrics.json").read_text())["video"]["psnr_db"] > 0
    pipe = UniTokPipeline.from_pretrained(run / "model")
    assert [(codes.name, rows.name) for codes, rows in pipe.model.tied_codes] == [("video", "image")]
    out = pipe.text_to_video(["a red 3 moving left"], seed=0)
    assert out.token_ids.shape == (1, 5, 64) and torch.equal(out.token_ids, pipe.text_to_video(
        ["a red 3 moving left"], seed=0).token_ids)
    index = json.loads((run / "model" / "model_index.json").read_text())
    index["layout"]["tied_codes"] = {"video": "audio"}
    (run / "model" / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ValueError, match=r"layout: tied_codes: video: audio must tie a media range of this model"):
        UniTokPipeline.from_pretrained(run / "model")
