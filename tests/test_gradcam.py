"""Grad-CAM and gallery tests on a tiny model with the saved-model structure.

The model learns "bright square present" vs "empty" on 48x48 noise images in 3 epochs, so the
pointing game has a planted answer: the square's box.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
tf = pytest.importorskip("tensorflow")

from engine.explain import gallery

from engine.explain import gradcam  # noqa: E402
from engine.errors import AuditrunError, InputError  # noqa: E402

SIZE = 48
CLASSES = ["blob", "empty"]
from conftest import LITE0  # noqa: E402 - the one path; AUDITRUN_TEST_LITE0 overrides it


def _phantoms(n: int, seed: int):
    """Even indices: a bright square at a random place (class 0, with its YOLO box); odd: noise only."""
    rng = np.random.default_rng(seed)
    x = rng.normal(30, 15, (n, SIZE, SIZE, 1)).clip(0, 255)
    y = np.zeros(n, dtype=np.int64)
    boxes = []
    for i in range(n):
        if i % 2 == 0:
            s = int(rng.integers(10, 15))
            r, c = (int(v) for v in rng.integers(0, SIZE - s, size=2))
            x[i, r:r + s, c:c + s] = rng.normal(220, 15, (s, s, 1))
            boxes.append(((c + s / 2) / SIZE, (r + s / 2) / SIZE, s / SIZE, s / SIZE))
        else:
            y[i] = 1
            boxes.append(None)
    return np.repeat(x, 3, axis=-1).clip(0, 255).astype(np.uint8), y, boxes


def _tiny_model(flat: bool = False):
    """Input -> "preprocess" -> nested "backbone" (rescale, conv, conv, ReLU) -> gap -> head_dense
    -> head_dropout -> logits -> softmax: the saved-model structure in miniature.

    ``flat=True`` builds the same layers without nesting: the keras-io reference can use it directly.
    """
    def backbone_layers(x):
        # Like keras.applications EfficientNet: the backbone rescales first (no variables upstream).
        x = keras.layers.Rescaling(2.0, offset=-1.0, name="bb_rescale")(x)
        x = keras.layers.Conv2D(8, 3, padding="same", activation="relu", name="bb_conv1")(x)
        x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name="bb_conv2")(x)
        return keras.layers.ReLU(name="bb_relu")(x)

    inputs = keras.Input((SIZE, SIZE, 3), name="image")
    x = keras.layers.Rescaling(1 / 255.0, name="preprocess")(inputs)
    if flat:
        x = backbone_layers(x)
    else:
        b_in = keras.Input((None, None, 3))
        x = keras.Model(b_in, backbone_layers(b_in), name="backbone")(x)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Dense(16, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(0.1, name="head_dropout")(x)
    x = keras.layers.Dense(len(CLASSES), name="logits")(x)
    out = keras.layers.Activation("softmax", name="probabilities")(x)
    return keras.Model(inputs, out, name="classifier")


@pytest.fixture(scope="module")
def trained():
    keras.utils.set_random_seed(0)
    x, y, _ = _phantoms(256, seed=0)
    model = _tiny_model()
    model.compile(keras.optimizers.Adam(1e-2), "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x.astype("float32"), y, epochs=3, batch_size=16, verbose=0)
    return model


@pytest.fixture(scope="module")
def test_set():
    return _phantoms(48, seed=1)


def _copy(model, flat: bool = False):
    clone = _tiny_model(flat=flat)
    clone.set_weights(model.get_weights())
    return clone


def _keras_io_gradcam(model, images, class_index, layer):
    """Reference: keras-io examples/vision/grad_cam.py on a FLAT model, at feature-map resolution."""
    grad_model = keras.Model(model.inputs, [model.get_layer(layer).output, model.get_layer("logits").output])
    x = tf.convert_to_tensor(images, tf.float32)
    with tf.GradientTape() as tape:
        tape.watch(x)  # else no gradient reaches a map with no variable upstream (e.g. "preprocess")
        fmap, logits = grad_model(x, training=False)
        score = tf.reduce_sum(tf.gather(logits, class_index, axis=1, batch_dims=1))
    grads = tape.gradient(score, fmap)
    cams = tf.nn.relu(tf.reduce_sum(tf.reduce_mean(grads, axis=(1, 2), keepdims=True) * fmap, -1)).numpy()
    with np.errstate(invalid="ignore"):  # the bare recipe divides 0 by 0 on an empty map
        return cams / cams.reshape(len(cams), -1).max(1)[:, None, None]


def _write_box_files(tmp_path: Path, boxes) -> list[str]:
    paths = []
    for i, box in enumerate(boxes):
        p = tmp_path / "data" / f"img{i:03d}.png"
        p.parent.mkdir(parents=True, exist_ok=True)
        if box is not None:
            p.with_suffix(".txt").write_text("0 %.6f %.6f %.6f %.6f\n" % box)
        paths.append(str(p))
    return paths


# ---------------------------------------------------------------- target layer

def test_automatic_layer_is_backbone_output_and_wrong_name_lists_candidates(trained):
    assert gradcam.find_target_layer(trained) == "bb_relu"
    assert gradcam.find_target_layer(trained, "bb_conv1") == "bb_conv1"
    with pytest.raises(InputError) as err:
        gradcam.find_target_layer(trained, "bb_conv3")
    msg = str(err.value)
    assert "'bb_conv3' does not exist" in msg and "bb_conv1" in msg and "bb_relu" in msg
    with pytest.raises(InputError, match="'gap' is not a 4-D feature map"):
        gradcam.find_target_layer(trained, "gap")


# ---------------------------------------------------------------- heatmaps

def test_pointing_game_hits_planted_boxes(trained, test_set):
    images, y, boxes = test_set
    assert (trained.predict(images.astype("float32"), verbose=0).argmax(1) == y).mean() >= 0.9
    maps = gradcam.gradcam_heatmaps(trained, images, y)
    assert maps.shape == (len(images), SIZE, SIZE) and maps.dtype == np.float32
    assert np.isfinite(maps).all() and maps.min() >= 0 and maps.max() <= 1
    game = gradcam.pointing_game([gradcam.heatmap_stats(m, b) for m, b in zip(maps, boxes)])
    assert game["total"] == sum(b is not None for b in boxes)
    assert game["chance_rate"] < 0.1
    assert game["rate"] >= 0.8, game


@pytest.mark.parametrize("layer", ["preprocess", "bb_rescale", "bb_conv1", "bb_relu"])
def test_nested_and_top_level_layers_match_flat_keras_io_reference(trained, test_set, layer):
    images, y, _ = test_set
    ours = gradcam.gradcam_heatmaps(trained, images[:8], y[:8], layer=layer, upsample=False)
    ref = _keras_io_gradcam(_copy(trained, flat=True), images[:8], y[:8], layer)
    blob = y[:8] == 0  # "empty" images may have no positive evidence (0/0 in the bare reference)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours[blob], ref[blob], atol=1e-4)
    assert ours[blob].max() == pytest.approx(1.0)


def test_frozen_backbone_inner_layer_still_gets_gradients(trained, test_set):
    images, y, _ = test_set
    model = _copy(trained)
    model.get_layer("backbone").trainable = False  # as during head-only training
    maps = gradcam.gradcam_heatmaps(model, images[:4], y[:4], layer="bb_conv1")
    np.testing.assert_allclose(maps, gradcam.gradcam_heatmaps(trained, images[:4], y[:4], layer="bb_conv1"),
                               atol=1e-5)


def test_gradients_taken_on_logits_not_saturated_softmax(trained, test_set):
    images, y, _ = test_set
    model = _copy(trained)
    logits = model.get_layer("logits")
    logits.set_weights([w * 1e4 for w in logits.get_weights()])
    x = tf.convert_to_tensor(images[:4], tf.float32)
    cls = tf.convert_to_tensor(y[:4])
    # The trap is real here: softmax is saturated and its gradient vanishes.
    with tf.GradientTape() as tape:
        tape.watch(x)
        prob = tf.reduce_sum(tf.gather(model(x, training=False), cls, axis=1, batch_dims=1))
    assert float(tf.reduce_max(tf.abs(tape.gradient(prob, x)))) == 0.0
    maps = gradcam.gradcam_heatmaps(model, images[:4], y[:4])
    assert np.isfinite(maps).all()
    assert maps[y[:4] == 0].reshape(-1, SIZE * SIZE).max(1) == pytest.approx(1.0)


def test_all_zero_map_normalises_to_zeros_not_nan(trained, test_set):
    images, y, boxes = test_set
    model = _copy(trained)
    logits = model.get_layer("logits")
    logits.set_weights([np.zeros_like(w) for w in logits.get_weights()])
    maps = gradcam.gradcam_heatmaps(model, images[:2], y[:2])
    assert np.isfinite(maps).all() and not maps.any()
    stats = gradcam.heatmap_stats(maps[0], boxes[0])
    assert stats["peak"] is None and stats["top20_area_fraction"] is None
    assert stats["peak_in_box"] is False  # an empty map points nowhere: a miss, not a skip
    assert gradcam.pointing_game([stats]) == {"hits": 0, "total": 1, "rate": 0.0,
                                              "chance_rate": stats["box_area_fraction"]}


def test_wrong_image_size_is_a_clear_error(trained):
    with pytest.raises(InputError, match="takes 48x48 images; got 32x32"):
        gradcam.gradcam_heatmaps(trained, np.zeros((1, 32, 32, 3)), [0])


def test_branched_model_is_refused_not_misexplained():
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Rescaling(1 / 255.0, name="preprocess")(inputs)
    b_in = keras.Input((None, None, 3))
    x = keras.Model(b_in, keras.layers.Conv2D(4, 3, name="bb_conv")(b_in), name="backbone")(x)
    pooled = keras.layers.GlobalAveragePooling2D(name="gap")(x)
    x = keras.layers.Add(name="merge")([keras.layers.Dense(4, name="head_dense")(pooled),
                                        keras.layers.Dense(4, name="side")(pooled)])
    x = keras.layers.Dense(2, name="logits")(x)
    model = keras.Model(inputs, keras.layers.Activation("softmax", name="probabilities")(x))
    with pytest.raises(AuditrunError, match="not a single chain"):
        gradcam.gradcam_heatmaps(model, np.zeros((1, SIZE, SIZE, 3)), [0])
    with pytest.raises(InputError, match="class index out of range 0..1"):
        gradcam.gradcam_heatmaps(model, np.zeros((1, SIZE, SIZE, 3)), [2])


# ---------------------------------------------------------------- stats and boxes

def test_heatmap_stats_peak_area_and_boxes():
    hm = np.zeros((10, 20), dtype=np.float32)
    hm[2, 15] = 1.0
    hm[2, 14] = 0.85  # >= 0.8 x max: part of the top-20 % area
    hm[7, 3] = 0.5
    s = gradcam.heatmap_stats(hm)
    assert s["peak"] == [pytest.approx(0.25), pytest.approx(0.775)]  # [y, x] of the pixel centre
    assert s["top20_area_fraction"] == pytest.approx(2 / 200)
    assert s["peak_in_box"] is None and s["box_area_fraction"] is None
    miss = (0.2, 0.75, 0.2, 0.2)
    hit = (0.75, 0.25, 0.2, 0.2)  # x = 0.65..0.85, y = 0.15..0.35
    assert gradcam.heatmap_stats(hm, miss)["peak_in_box"] is False
    assert gradcam.heatmap_stats(hm, [miss, hit])["peak_in_box"] is True
    assert gradcam.heatmap_stats(hm, [])["peak_in_box"] is None
    assert gradcam.pointing_game([gradcam.heatmap_stats(hm, b) for b in (miss, hit, None)])["rate"] == 0.5
    assert gradcam.pointing_game([]) == {"hits": 0, "total": 0, "rate": None, "chance_rate": None}


def test_yolo_box_files(tmp_path):
    from engine.data.annotations import AnnotationError, parse_yolo

    txt = tmp_path / "a.txt"
    txt.write_text("0 0.5 0.25 0.2 0.1\n\n3 0.1 0.9 0.05 0.05\n")  # blank lines skipped, class ignored
    assert parse_yolo(txt).boxes == ((0.5, 0.25, 0.2, 0.1), (0.1, 0.9, 0.05, 0.05))
    txt.write_text("")
    assert parse_yolo(txt) is None
    for bad in ("0 0.5 0.5 0.2\n", "0 0.5 0.5 1.5 0.2\n", "0 x 0.5 0.2 0.2\n", "0 0.5 0.5 0 0.2\n"):
        txt.write_text("0 0.5 0.5 0.2 0.2\n" + bad)
        with pytest.raises(AnnotationError) as caught:
            parse_yolo(txt)
        assert caught.value.line == 2 and caught.value.path == txt


# ---------------------------------------------------------------- gallery

def test_select_gallery_is_seeded_and_order_independent():
    rng = np.random.default_rng(5)
    n = 120
    y_true = rng.integers(0, 3, n)
    y_pred = np.where(rng.random(n) < 0.8, y_true, (y_true + 1) % 3)
    y_pred[y_true == 2] = 2  # class 2: no misclassified image at all
    paths = [f"img{i:03d}.png" for i in range(n)]
    names = ["a", "b", "c"]
    pick = gallery.select_gallery(y_true, y_pred, paths, names, 3, seed=11)
    assert pick == gallery.select_gallery(y_true, y_pred, paths, names, 3, seed=11)
    for c in range(3):
        ok = [i for i in pick if y_true[i] == c and y_pred[i] == c]
        wrong = [i for i in pick if y_true[i] == c and y_pred[i] != c]
        assert len(ok) == 3 and len(wrong) == (0 if c == 2 else min(3, int(((y_true == c) & (y_pred != c)).sum())))
    perm = rng.permutation(n)
    shuffled = gallery.select_gallery(y_true[perm], y_pred[perm], [paths[i] for i in perm], names, 3, seed=11)
    assert [paths[perm[i]] for i in shuffled] == [paths[i] for i in pick]
    assert gallery.select_gallery(y_true, y_pred, paths, names, 3, seed=12) != pick
    by_name = gallery.select_gallery([names[i] for i in y_true], [names[i] for i in y_pred], paths, names, 3, 11)
    assert by_name == pick


def test_render_gallery_images_writes_three_pngs(tmp_path):
    import matplotlib.image as mpimg

    image = np.full((32, 32, 3), 40, dtype=np.uint8)
    yy, xx = np.mgrid[:32, :32]
    heat = np.exp(-((yy - 10) ** 2 + (xx - 20) ** 2) / 30.0).astype(np.float32)
    files = gallery.render_gallery_images(image, heat, tmp_path / "g", "ex", boxes=[(0.6, 0.3, 0.3, 0.3)])
    assert files == {k: f"ex_{k}.png" for k in ("original", "heatmap", "overlay")}
    png = {k: mpimg.imread(tmp_path / "g" / name)[..., :3] for k, name in files.items()}
    assert sorted(p.name for p in (tmp_path / "g").iterdir()) == sorted(files.values())  # no temp files
    assert png["original"].shape[:2] == png["overlay"].shape[:2] and png["original"].shape[0] >= 200
    assert png["heatmap"].shape[1] > png["original"].shape[1]  # room for the colour bar
    assert np.ptp(png["original"], axis=-1).max() < 0.02  # a grey image stays grey...
    assert np.ptp(png["overlay"], axis=-1).max() > 0.3  # ...and the overlay is coloured by the map


def test_explain_backbone_block(trained, test_set, tmp_path):
    images, y, boxes = test_set
    paths = _write_box_files(tmp_path, boxes)
    probs = trained.predict(images.astype("float32"), verbose=0)
    run_dir = tmp_path / "run"
    block = gallery.explain_backbone(trained, images, y, probs, paths, CLASSES, run_dir / "gradcam" / "tiny",
                                     n_per_class=1, seed=3, data_root=tmp_path / "data", run_dir=run_dir,
                                     outlines=boxes)
    json.dumps(block, allow_nan=False)
    assert block["layer"] == "bb_relu" and block["images_per_class"] == 1
    assert "pointing_game" not in block  # localisation is scored once per method, by engine.explain.localise
    items = block["items"]
    assert [it["true_class"] for it in items if it["correct"]] == CLASSES
    for it in items:
        assert it["image"].startswith("img") and it["image"].endswith(".png")
        i = paths.index(str(tmp_path / "data" / it["image"]))
        assert it["probability"] == pytest.approx(float(probs[i].max()))
        assert (it["peak_in_box"] is None) == (boxes[i] is None)
        for rel in it["files"].values():
            assert rel.startswith("gradcam/tiny/") and (run_dir / rel).is_file()
    again = gallery.explain_backbone(trained, images, y, probs, paths, CLASSES, tmp_path / "again",
                                     n_per_class=1, seed=3, data_root=tmp_path / "data")
    assert [it["image"] for it in again["items"]] == [it["image"] for it in items]
    assert all(it["peak_in_box"] is None for it in again["items"])  # no outlines given: none drawn or scored


def test_pointing_game_on_is_the_localisation_blocks_strict_game(trained, test_set, tmp_path):
    from engine.explain.localise import localise

    images, y, boxes = test_set
    paths = [str(tmp_path / f"img{i:03d}.png") for i in range(len(images))]
    alone = gallery.pointing_game_on(trained, images, [CLASSES[i] for i in y], paths, CLASSES, seed=3,
                                     outlines=boxes)
    located = localise(trained, images, y, boxes, ["gradcam"], 3, tmp_path / "loc", tmp_path, class_names=CLASSES,
                       names=paths, max_images=200, n_boot=50)[0]
    # one computation: the validation game and the localisation block agree image for image
    assert (alone["hits"], alone["total"]) == (located["hits"], located["total"]) and alone["rate"] >= 0.8
    assert alone["chance_rate"] == pytest.approx(located["chance_rate"])
    with pytest.raises(InputError, match="'bb_conv3' does not exist"):  # the layer really is passed on
        gallery.pointing_game_on(trained, images, y, paths, CLASSES, seed=3, layer="bb_conv3", outlines=boxes)
    capped = gallery.pointing_game_on(trained, images, y, paths, CLASSES, seed=3, max_images=4, outlines=boxes)
    assert capped["total"] == 4 and capped["per_class"]["blob"]["total"] == 4
    assert gallery.pointing_game_on(trained, images, y, paths, CLASSES, seed=3) is None  # no outlines
    with pytest.raises(ValueError, match="same length"):
        gallery.pointing_game_on(trained, images[:3], y, paths[:3], CLASSES, seed=3, outlines=boxes)


# ---------------------------------------------------------------- the real Lite0 backbone file

@pytest.mark.skipif(not LITE0.is_file(), reason=f"{LITE0} not present")
@pytest.mark.slow
def test_lite0_file_as_nested_backbone():
    lite = keras.saving.load_model(LITE0, compile=False)
    backbone = lite
    backbone.name = "backbone"  # as engine.training.backbones.build_classifier does
    inputs = keras.Input((96, 96, 3), name="image")
    x = keras.layers.Identity(name="preprocess")(inputs)
    x = keras.layers.GlobalAveragePooling2D(name="gap")(backbone(x))
    x = keras.layers.Dense(8, activation="relu", name="head_dense")(x)
    x = keras.layers.Dropout(0.5, name="head_dropout")(x)
    x = keras.layers.Dense(4, name="logits")(x)
    model = keras.Model(inputs, keras.layers.Activation("softmax", name="probabilities")(x))
    assert gradcam.find_target_layer(model) == "top_bn_relu6"
    images = np.random.default_rng(0).integers(0, 256, (2, 96, 96, 3)).astype(np.uint8)
    maps = gradcam.gradcam_heatmaps(model, images, [0, 1])
    assert maps.shape == (2, 96, 96) and np.isfinite(maps).all()
    assert maps.min() >= 0 and maps.max() <= 1
