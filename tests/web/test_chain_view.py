"""The page's pure parts: chain text (possibly still arriving) to chips, panels and answer; the sweep table."""
import numpy as np
import pytest
from PIL import Image

from robust_r1_jax import degrade
from robust_r1_jax.web import chain_view, inputs, sweep
from robust_r1_jax.web.chain_view import Chip

CHAIN = ("<TYPE>lens blur(0.42), noise(0.10)<TYPE_END>\n<INFLUENCE>soft <edges><INFLUENCE_END>\n"
         "<REASONING>three corners<REASONING_END>\n<CONCLUSION>a triangle<CONCLUSION_END>\n<ANSWER>2<ANSWER_END>")
OPTIONS = ("circle", "square", "triangle", "star")


def test_chips_pair_predictions_with_what_was_applied():
    chips = chain_view.type_chips(CHAIN, [("lens blur", 0.45), ("darkness", 0.3)])
    assert chips == [Chip("lens blur", 0.42, 0.45), Chip("noise", 0.10, None), Chip("darkness", None, 0.3)]
    assert [c.status for c in chips] == ["hit", "extra", "missed"]


def test_chips_while_the_type_block_is_still_arriving():
    assert chain_view.type_chips("<TYPE>lens blur(0.42), noi", ()) == [Chip("lens blur", 0.42, None)]
    assert chain_view.type_chips("<TYPE>lens blur(0.4", ()) == []  # a pair counts once its ")" arrives
    assert chain_view.type_chips("", [("noise", 0.2)]) == [Chip("noise", None, 0.2)]
    assert "model: no degradation" in chain_view.chips_html("<TYPE>none<TYPE_END>", ())
    assert "waiting for" in chain_view.chips_html("", ())


def test_partial_blocks_hide_a_cut_off_tag():
    blocks = chain_view.partial_blocks("<TYPE>noise(0.20)<TYPE_END>\n<INFLUENCE>grainy<INFLU")
    assert blocks["TYPE"] == chain_view.Block("noise(0.20)", True)
    assert blocks["INFLUENCE"] == chain_view.Block("grainy", False)
    assert "REASONING" not in blocks


def test_panels_escape_model_text_and_highlight_the_answer():
    html = chain_view.panels_html(CHAIN, OPTIONS)
    assert "soft &lt;edges&gt;" in html and "<edges>" not in html
    assert html.count('class="rr-panel"') == 3
    assert 'class="rr-answer">answer: <b>2 (triangle)</b>' in html
    assert "rr-writing" in chain_view.panels_html("<TYPE>none<TYPE_END><REASONING>thinking", OPTIONS)
    assert "no chain blocks" in chain_view.panels_html("just <b>words</b>", ())


def test_answer_text_with_and_without_options():
    assert chain_view.answer_text(CHAIN, OPTIONS) == "2 (triangle)"
    assert chain_view.answer_text(CHAIN, ()) == "2"
    assert chain_view.answer_text(CHAIN.replace("<ANSWER>2", "<ANSWER>9"), OPTIONS).startswith("unreadable")
    assert chain_view.answer_text("<ANSWER>2", OPTIONS) is None  # not closed yet


def test_sweep_levels_are_the_protocol_levels():
    assert sweep.LEVELS == (("clean", 0.0), ("25%", 0.23), ("50%", 0.45), ("100%", 0.9))
    assert sweep.sweep_type("noise", 7) == "noise"
    assert sweep.sweep_type(inputs.RANDOM, 7) == degrade.sample_benchmark(7)


def test_sweep_table_rows():
    points = [sweep.SweepPoint("clean", 0.0, CHAIN.replace("lens blur(0.42), noise(0.10)", "none"), 30),
              sweep.SweepPoint("50%", 0.45, CHAIN, 40),
              sweep.SweepPoint("100%", 0.9, "<TYPE>noise(0.8)<TYPE_END>", 12)]
    table = sweep.sweep_table(points, "lens blur", OPTIONS)
    assert table == [["clean", "clean", "none", "", "2 (triangle)", 30],
                     ["50%", "lens blur 0.45", "lens blur(0.42), noise(0.10)", 0.42, "2 (triangle)", 40],
                     ["100%", "lens blur 0.90", "noise(0.80)", "", "", 12]]
    assert len(sweep.sweep_figure(points, "lens blur", OPTIONS).axes[0].lines) == 2


@pytest.mark.parametrize("content, message", [
    (b"GIF89a not really", "is not an image"),
    (b"", "is not an image"),
])
def test_uploads_that_are_not_images(tmp_path, content, message):
    path = tmp_path / "upload.png"
    path.write_bytes(content)
    with pytest.raises(inputs.InputProblem, match=message):
        inputs.read_upload(str(path), inputs.Limits())


def test_a_non_image_message_names_the_upload_not_the_servers_temporary_path(tmp_path):
    path = tmp_path / "gradio" / "0123abcd" / "notes.txt"
    path.parent.mkdir(parents=True)
    path.write_text("hello, not a picture\n")
    with pytest.raises(inputs.InputProblem) as raised:
        inputs.read_upload(str(path), inputs.Limits())
    assert str(raised.value) == ("notes.txt is not an image the app can read (PNG, JPEG, WebP, BMP, GIF, TIFF): "
                                 "cannot identify image file notes.txt")


def test_upload_limits(tmp_path):
    from PIL import Image
    path = tmp_path / "wide.png"
    Image.fromarray(np.zeros((20, 900, 3), np.uint8)).save(path)
    with pytest.raises(inputs.InputProblem, match="aspect ratio of 45:1"):
        inputs.read_upload(str(path), inputs.Limits())
    with pytest.raises(inputs.InputProblem, match="MP"):
        inputs.read_upload(str(path), inputs.Limits(max_pixels=10_000))
    with pytest.raises(inputs.InputProblem, match="MiB"):
        inputs.read_upload(str(path), inputs.Limits(max_file_bytes=10))
    with pytest.raises(inputs.InputProblem, match="at least 8"):
        inputs.check_image_array(np.zeros((4, 4, 3), np.uint8), inputs.Limits())
    Image.fromarray(np.zeros((300, 1000, 3), np.uint8)).save(path)
    assert inputs.read_upload(str(path), inputs.Limits(max_side=500)).shape == (150, 500, 3)


def test_degradation_plans():
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    assert inputs.plan(inputs.CLEAN, 0.7, 0).applied == ()
    assert inputs.plan("noise", 0.0, 0).applied == ()
    assert inputs.plan("noise", 0.456, 3).applied == (("noise", 0.46),)
    drawn = inputs.plan(inputs.RANDOM, 0.0, 5, (1, 3))
    assert drawn == inputs.plan(inputs.RANDOM, 0.9, 5, (1, 3)) and 1 <= len(drawn.applied) <= 3
    np.testing.assert_array_equal(inputs.apply(image, inputs.plan("noise", 0.5, 3)),
                                  degrade.compose(image, [("noise", 0.5)], seed=3)[0])
    with pytest.raises(inputs.InputProblem, match="unknown degradation"):
        inputs.plan("fog", 0.5, 0)
    with pytest.raises(inputs.InputProblem, match="seed"):
        inputs.plan("noise", 0.5, -1)


def test_an_upload_is_turned_upright_by_its_exif_orientation(tmp_path):
    stored = np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8)  # 80 wide as the sensor wrote it
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    Image.fromarray(stored).save(tmp_path / "phone.png", exif=exif)
    assert np.array_equal(inputs.read_upload(str(tmp_path / "phone.png"), inputs.Limits()), np.rot90(stored, k=-1))
